#include "runtime/server/load_generator.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "common/splitmix.h"
#include "common/types.h"

namespace computron::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using nlohmann::json;

LoadTarget parseUrl(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) throw ConfigError("--url '" + url + "': expected http://HOST[:PORT][/PATH]");
  std::string rest = url.substr(scheme.size());
  LoadTarget t;
  if (const auto slash = rest.find('/'); slash != std::string::npos) {
    t.path_prefix = rest.substr(slash);
    rest.resize(slash);
    while (!t.path_prefix.empty() && t.path_prefix.back() == '/') t.path_prefix.pop_back();
  }
  t.port = 80;
  if (const auto colon = rest.rfind(':'); colon != std::string::npos) {
    const std::string port = rest.substr(colon + 1);
    rest.resize(colon);
    int p = -1;
    try {
      std::size_t used = 0;
      p = std::stoi(port, &used);
      if (used != port.size()) p = -1;
    } catch (const std::exception&) {
      p = -1;
    }
    if (p < 1 || p > 65535) throw ConfigError("--url '" + url + "': bad port '" + port + "'");
    t.port = static_cast<unsigned short>(p);
  }
  if (rest.empty()) throw ConfigError("--url '" + url + "': no host");
  t.host = rest;
  return t;
}

namespace {

using Clock = std::chrono::steady_clock;

struct Outcome {
  RequestRecord record;
  int status = 0;
  std::int64_t tokens = 0;
  std::int64_t done_events = 0;   // [DONE] events in the response
  std::string completion_id;      // the response's "id"
  Nanos server_latency = -1;      // computron.latency_ms of the last event, if any
};

class Connection;
using Report = std::function<void(Outcome, const std::shared_ptr<Connection>&)>;

// One connection, sending streamed completions one after another (keep-alive), or one only.
// Lives on its strand; each request's outcome goes to `report` once, with the connection, which
// is then ready for the next send() if `reusable()`.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(net::io_context& ioc, const tcp::resolver::results_type& endpoints, Clock::time_point epoch,
             const LoadTarget& target, bool keep_alive, Report report, std::atomic<std::int64_t>& connects)
      : stream_(net::make_strand(ioc)), endpoints_(endpoints), epoch_(epoch), target_(target),
        keep_alive_(keep_alive), report_(std::move(report)), connects_(connects) {
    // The parser keeps a reference to this callback; it captures `this`, not a shared pointer,
    // so the connection does not keep itself alive.
    on_chunk_ = [this](std::uint64_t, beast::string_view data, beast::error_code&) -> std::size_t {
      events_.append(data.data(), data.size());
      scanEvents();
      return data.size();
    };
  }

  bool reusable() const { return keep_alive_ && connected_; }

  // Any thread.
  void send(const Request& request, std::string body, Nanos timeout) {
    net::post(stream_.get_executor(), [self = shared_from_this(), request, body = std::move(body), timeout]() mutable {
      self->begin(request, std::move(body), timeout);
    });
  }

 private:
  Nanos now() const { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch_).count(); }

  void begin(const Request& request, std::string body, Nanos timeout) {
    out_ = Outcome{};
    out_.record.request = request;
    events_.clear();
    error_.clear();
    req_ = {http::verb::post, target_.path_prefix + "/v1/completions", 11};
    req_.set(http::field::host, target_.host);
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::accept, "text/event-stream");
    if (!target_.api_key.empty()) req_.set(http::field::authorization, "Bearer " + target_.api_key);
    req_.keep_alive(keep_alive_);
    req_.body() = std::move(body);
    req_.prepare_payload();
    stream_.expires_after(std::chrono::nanoseconds(timeout));
    out_.record.start = now();
    if (connected_) return write();
    stream_.async_connect(endpoints_, [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
      if (ec) return self->fail("connect: " + ec.message());
      self->connected_ = true;
      ++self->connects_;
      self->write();
    });
  }

  void write() {
    http::async_write(stream_, req_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->fail("write: " + ec.message());
      self->readHeader();
    });
  }

  void readHeader() {
    parser_.emplace();
    parser_->body_limit(boost::none);
    http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->fail("read: " + ec.message());
      self->out_.status = static_cast<int>(self->parser_->get().result_int());
      self->parser_->on_chunk_body(self->on_chunk_);
      http::async_read(self->stream_, self->buffer_, *self->parser_, [self](beast::error_code ec2, std::size_t) {
        if (ec2) return self->fail("read: " + ec2.message());
        self->events_ += self->parser_->get().body();  // a body that was not chunked
        self->scanEvents();
        self->finish();
      });
    });
  }

  void scanEvents() {
    std::size_t end;
    while ((end = events_.find("\n\n")) != std::string::npos) {
      std::string event = events_.substr(0, end);
      events_.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      event.erase(0, 6);
      if (event == "[DONE]") {
        ++out_.done_events;
        continue;
      }
      const json doc = json::parse(event, nullptr, false);
      if (!doc.is_object()) continue;
      if (doc.contains("error")) {
        error_ = doc["error"].is_object() ? doc["error"].value("message", std::string("error event")) : "error event";
        continue;
      }
      if (doc.contains("id") && doc["id"].is_string()) out_.completion_id = doc["id"].get<std::string>();
      if (doc.contains("computron") && doc["computron"].is_object() && doc["computron"].contains("latency_ms") &&
          doc["computron"]["latency_ms"].is_number())
        out_.server_latency = static_cast<Nanos>(doc["computron"]["latency_ms"].get<double>() * 1e6);
      std::int64_t tokens = 0;
      if (doc.contains("choices") && doc["choices"].is_array() && !doc["choices"].empty()) {
        const json& c = doc["choices"][0];
        if (c.contains("token_ids") && c["token_ids"].is_array()) {
          tokens = static_cast<std::int64_t>(c["token_ids"].size());
        } else if ((c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty()) ||
                   (c.contains("delta") && c["delta"].is_object())) {
          tokens = 1;  // another server: one token per event
        }
      }
      if (tokens > 0) {
        const Nanos t = now();
        if (out_.tokens == 0) out_.record.first_token = t;
        out_.record.finish = t;
        out_.tokens += tokens;
      }
    }
  }

  void finish() {
    const bool server_keeps = parser_->get().keep_alive();
    if (!keep_alive_ || !server_keeps) close();
    if (out_.status != 200) {
      const json doc = json::parse(parser_->get().body(), nullptr, false);
      std::string message = "HTTP " + std::to_string(out_.status);
      if (doc.is_object() && doc.contains("error") && doc["error"].is_object())
        message += ": " + doc["error"].value("message", std::string());
      return fail(message, false);
    }
    if (!error_.empty()) return fail(error_, false);
    if (out_.done_events == 0) return fail("the stream ended without [DONE]", false);
    if (out_.tokens == 0) return fail("no tokens", false);
    out_.record.ok = true;
    report_(std::move(out_), shared_from_this());
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    connected_ = false;
  }

  // `broken`: the connection is in an unknown state (a transport error): it is not reused.
  void fail(const std::string& error, bool broken = true) {
    if (broken) close();
    out_.record.ok = false;
    out_.record.error = error;
    out_.record.finish = now();
    if (out_.record.first_token == 0) out_.record.first_token = out_.record.finish;
    report_(std::move(out_), shared_from_this());
  }

  beast::tcp_stream stream_;
  tcp::resolver::results_type endpoints_;
  Clock::time_point epoch_;
  const LoadTarget& target_;
  bool keep_alive_ = false;
  bool connected_ = false;
  Report report_;
  std::atomic<std::int64_t>& connects_;
  http::request<http::string_body> req_;
  beast::flat_buffer buffer_;
  std::function<std::size_t(std::uint64_t, beast::string_view, beast::error_code&)> on_chunk_;
  std::optional<http::response_parser<http::string_body>> parser_;
  std::string events_;
  std::string error_;
  Outcome out_;
};

}  // namespace

LoadStats runLoad(const LoadTarget& target, RequestSource& source, const LoadOptions& options,
                  const std::function<void(const RequestRecord&)>& done) {
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(target.host, std::to_string(target.port), ec);
  if (ec) throw ConfigError("cannot resolve '" + target.host + "': " + ec.message());

  std::mutex mutex;  // finished, backlog, idle
  std::condition_variable cv;
  std::deque<Outcome> finished;
  struct Pending {
    Request request;
    std::string body;
  };
  std::deque<Pending> backlog;                    // due, waiting for a free pooled connection
  // Pooled connections free to send, least recently used first: every one of them is used (and
  // stays open) before any is used twice, so N connections are open at once once N requests went.
  std::deque<std::shared_ptr<Connection>> idle;
  const bool pooled = options.connections > 0;
  std::atomic<std::int64_t> connects{0};
  std::int64_t max_backlog = 0;
  // On a connection's strand: the outcome goes to the main thread; a pooled connection takes the
  // next waiting request, or waits in `idle` (a broken one reconnects on its next send).
  Report report = [&](Outcome o, const std::shared_ptr<Connection>& conn) {
    std::optional<Pending> next_pending;
    {
      std::lock_guard<std::mutex> lock(mutex);
      finished.push_back(std::move(o));
      if (pooled) {
        if (!backlog.empty()) {
          next_pending = std::move(backlog.front());
          backlog.pop_front();
        } else {
          idle.push_back(conn);
        }
      }
    }
    if (next_pending) conn->send(next_pending->request, std::move(next_pending->body), options.time_limit);
    cv.notify_one();
  };

  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, options.threads); ++i) threads.emplace_back([&ioc] { ioc.run(); });

  LoadStats stats;
  const Clock::time_point epoch = Clock::now();
  auto now = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(); };
  for (int i = 0; i < options.connections; ++i)
    idle.push_back(std::make_shared<Connection>(ioc, endpoints, epoch, target, true, report, connects));
  std::optional<Request> next = source.next();
  std::int64_t in_flight = 0;
  std::unordered_map<RequestId, int> outcomes;  // per request sent: outcomes seen
  std::unordered_set<std::string> completion_ids;
  auto stopThreads = [&] {
    ioc.stop();
    for (auto& th : threads) th.join();
    std::lock_guard<std::mutex> lock(mutex);
    idle.clear();  // the connections hold `report`, which refers to this frame
  };
  try {
    for (;;) {
      if (!next && source.exhausted() && in_flight == 0) break;
      const Nanos t = now();
      if (t > options.time_limit) {
        throw std::runtime_error("bench serve: not finished after " + std::to_string(toSeconds(options.time_limit)) +
                                 " s (" + std::to_string(in_flight) + " requests in flight)");
      }
      if (next && next->arrival <= t) {
        const Request r = *next;
        const auto m = static_cast<std::size_t>(r.model);
        json prompt = json::array();
        const std::uint64_t vocab = static_cast<std::uint64_t>(std::max(1, options.vocab.at(m)));
        for (std::int32_t k = 0; k < std::max(1, r.prompt_tokens); ++k) {
          prompt.push_back(splitmix64(static_cast<std::uint64_t>(r.id) * 1000003ull + static_cast<std::uint64_t>(k)) % vocab);
        }
        const json body = {{"model", options.model_names.at(m)},
                           {"prompt", prompt},
                           {"max_tokens", std::max(1, r.output_tokens)},
                           {"stream", true}};
        if (!outcomes.emplace(r.id, 0).second) throw std::runtime_error("bench serve: request id " + std::to_string(r.id) + " sent twice");
        if (pooled) {
          std::shared_ptr<Connection> conn;
          {
            std::lock_guard<std::mutex> lock(mutex);
            if (!idle.empty()) {
              conn = std::move(idle.front());
              idle.pop_front();
            } else {
              backlog.push_back(Pending{r, body.dump()});
              max_backlog = std::max<std::int64_t>(max_backlog, static_cast<std::int64_t>(backlog.size()));
            }
          }
          if (conn) conn->send(r, body.dump(), options.time_limit);
        } else {
          std::make_shared<Connection>(ioc, endpoints, epoch, target, false, report, connects)
              ->send(r, body.dump(), options.time_limit);
        }
        ++stats.sent;
        ++in_flight;
        next = source.next();
        continue;
      }
      std::deque<Outcome> batch;
      {
        std::unique_lock<std::mutex> lock(mutex);
        const Nanos deadline = next ? next->arrival : options.time_limit + kNanosPerMilli;
        cv.wait_until(lock, epoch + std::chrono::nanoseconds(deadline), [&] { return !finished.empty(); });
        batch.swap(finished);
      }
      for (Outcome& o : batch) {
        const auto seen = outcomes.find(o.record.request.id);
        if (seen == outcomes.end() || ++seen->second > 1) {
          ++stats.answered_twice;
          continue;
        }
        const std::int64_t max_tokens = std::max(1, o.record.request.output_tokens);
        if (o.done_events > 1 || o.tokens > max_tokens ||
            (!o.completion_id.empty() && !completion_ids.insert(o.completion_id).second))
          ++stats.answered_twice;
        --in_flight;
        ++stats.statuses[o.status];
        stats.tokens += o.tokens;
        ++(o.record.ok ? stats.ok : stats.failed);
        if (o.record.ok && o.server_latency >= 0)
          stats.added_latency.push_back(o.record.finish - o.record.start - o.server_latency);
        done(o.record);
        source.onRequestDone(o.record.request, o.record.finish);
        if (!next) next = source.next();
      }
    }
  } catch (...) {
    stopThreads();
    throw;
  }
  for (const auto& [id, count] : outcomes)
    if (count == 0) ++stats.unanswered;
  stats.max_backlog = max_backlog;
  stats.connects = connects.load();
  stats.end = now();
  {
    std::lock_guard<std::mutex> lock(mutex);
    idle.clear();  // closes the pooled connections
  }
  work.reset();
  for (auto& th : threads) th.join();
  return stats;
}

}  // namespace computron::server
