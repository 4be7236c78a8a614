#include "runtime/server/load_generator.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

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
};

// One streamed completion on its own connection. Lives on its strand; reports once through `report`.
class Call : public std::enable_shared_from_this<Call> {
 public:
  Call(net::io_context& ioc, const tcp::resolver::results_type& endpoints, Clock::time_point epoch,
       std::function<void(Outcome)> report)
      : stream_(net::make_strand(ioc)), endpoints_(endpoints), epoch_(epoch), report_(std::move(report)) {
    // The parser keeps a reference to this callback; it captures `this`, not a shared pointer,
    // so the call does not keep itself alive.
    on_chunk_ = [this](std::uint64_t, beast::string_view data, beast::error_code&) -> std::size_t {
      events_.append(data.data(), data.size());
      scanEvents();
      return data.size();
    };
  }

  void start(const LoadTarget& target, const Request& request, const std::string& body, Nanos timeout) {
    out_.record.request = request;
    req_ = {http::verb::post, target.path_prefix + "/v1/completions", 11};
    req_.set(http::field::host, target.host);
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::accept, "text/event-stream");
    if (!target.api_key.empty()) req_.set(http::field::authorization, "Bearer " + target.api_key);
    req_.keep_alive(false);
    req_.body() = body;
    req_.prepare_payload();
    stream_.expires_after(std::chrono::nanoseconds(timeout));
    out_.record.start = now();
    stream_.async_connect(endpoints_, [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
      if (ec) return self->fail("connect: " + ec.message());
      http::async_write(self->stream_, self->req_, [self](beast::error_code ec2, std::size_t) {
        if (ec2) return self->fail("write: " + ec2.message());
        self->readHeader();
      });
    });
  }

 private:
  Nanos now() const { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch_).count(); }

  void readHeader() {
    parser_.body_limit(boost::none);
    http::async_read_header(stream_, buffer_, parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->fail("read: " + ec.message());
      self->out_.status = static_cast<int>(self->parser_.get().result_int());
      self->parser_.on_chunk_body(self->on_chunk_);
      http::async_read(self->stream_, self->buffer_, self->parser_, [self](beast::error_code ec2, std::size_t) {
        if (ec2) return self->fail("read: " + ec2.message());
        self->events_ += self->parser_.get().body();  // a body that was not chunked
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
        done_ = true;
        continue;
      }
      const json doc = json::parse(event, nullptr, false);
      if (!doc.is_object()) continue;
      if (doc.contains("error")) {
        error_ = doc["error"].value("message", std::string("error event"));
        continue;
      }
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
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    if (out_.status != 200) {
      const json doc = json::parse(parser_.get().body(), nullptr, false);
      std::string message = "HTTP " + std::to_string(out_.status);
      if (doc.is_object() && doc.contains("error") && doc["error"].is_object())
        message += ": " + doc["error"].value("message", std::string());
      return fail(message);
    }
    if (!error_.empty()) return fail(error_);
    if (!done_) return fail("the stream ended without [DONE]");
    if (out_.tokens == 0) return fail("no tokens");
    out_.record.ok = true;
    report_(std::move(out_));
  }

  void fail(const std::string& error) {
    out_.record.ok = false;
    out_.record.error = error;
    out_.record.finish = now();
    if (out_.record.first_token == 0) out_.record.first_token = out_.record.finish;
    report_(std::move(out_));
  }

  beast::tcp_stream stream_;
  tcp::resolver::results_type endpoints_;
  Clock::time_point epoch_;
  std::function<void(Outcome)> report_;
  http::request<http::string_body> req_;
  beast::flat_buffer buffer_;
  std::function<std::size_t(std::uint64_t, beast::string_view, beast::error_code&)> on_chunk_;
  http::response_parser<http::string_body> parser_;
  std::string events_;
  bool done_ = false;
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

  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Outcome> finished;
  auto report = [&](Outcome o) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      finished.push_back(std::move(o));
    }
    cv.notify_one();
  };

  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, options.threads); ++i) threads.emplace_back([&ioc] { ioc.run(); });

  LoadStats stats;
  const Clock::time_point epoch = Clock::now();
  auto now = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(); };
  std::optional<Request> next = source.next();
  std::int64_t in_flight = 0;
  std::string failure;
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
        auto call = std::make_shared<Call>(ioc, endpoints, epoch, report);
        call->start(target, r, body.dump(), options.time_limit);
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
        --in_flight;
        ++stats.statuses[o.status];
        stats.tokens += o.tokens;
        ++(o.record.ok ? stats.ok : stats.failed);
        done(o.record);
        source.onRequestDone(o.record.request, o.record.finish);
        if (!next) next = source.next();
      }
    }
  } catch (...) {
    ioc.stop();
    for (auto& th : threads) th.join();
    throw;
  }
  stats.end = now();
  work.reset();
  for (auto& th : threads) th.join();
  return stats;
}

}  // namespace computron::server
