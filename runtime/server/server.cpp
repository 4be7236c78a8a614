#include "runtime/server/server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iostream>
#include <atomic>
#include <deque>
#include <chrono>
#include <future>
#include <ctime>
#include <cstdio>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace computron::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using nlohmann::json;

namespace {

bool isHttpParseError(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category();
}

double millisSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

std::string raiseOpenFileLimit(std::size_t wanted) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return "cannot read the open-file limit (RLIMIT_NOFILE)";
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  // Beyond the connections: the listener, the engine's and the log's descriptors.
  const std::size_t needed = wanted + 64;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed)
    return "the open-file limit is " + std::to_string(limit.rlim_cur) + " (hard limit " + std::to_string(limit.rlim_max) +
           "), below the " + std::to_string(needed) + " that " + std::to_string(wanted) +
           " connections need: connections beyond it fail to be accepted";
  return "";
}

class Session;

class HttpServer::Impl {
 public:
  Impl(EngineConfig config, runtime::RealBackend& backend, ServerOptions options);

  void run();
  void shutdown() { loop_.drain(); }
  unsigned short port() const { return port_; }

  const ServerOptions& options() const { return options_; }
  int stopSignal() const { return stop_signal_.load(); }
  ServingLoop& loop() { return loop_; }
  const std::vector<ModelInfo>& models() const { return models_; }
  std::uint64_t nextCompletionNumber() { return ++completions_; }
  // Routes one request; called on the session's strand.
  void route(const std::shared_ptr<Session>& session, http::request<http::string_body>& req);
  void connectionClosed() { --open_connections_; }

 private:
  void accept();
  // Over --max-connections: 503 and close, without a session (nothing of it can hang).
  void refuseConnection(tcp::socket socket);
  json modelJson(std::size_t m, const ModelStatus& status) const;

  // First, so that it outlives the sessions that the io_context may still hold when it goes.
  std::atomic<int> open_connections_{0};
  ServerOptions options_;
  std::vector<ModelInfo> models_;
  ServingLoop loop_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  net::signal_set signals_;
  std::atomic<int> stop_signal_{0};  // the signal that drained the server
  unsigned short port_ = 0;
  std::atomic<std::uint64_t> completions_{0};
  std::mutex sessions_mutex_;
  std::vector<std::weak_ptr<Session>> sessions_;
};

// One connection. Every member is touched only on the connection's strand; the engine's thread
// reaches it by posting onto that strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server)
      : strand_(socket.get_executor()), stream_(std::move(socket)), server_(server), request_timer_(strand_) {}
  ~Session() { server_.connectionClosed(); }

  void start() {
    net::dispatch(strand_, [self = shared_from_this()] { self->readRequest(); });
  }
  // Any thread: close once the current response (if any) is written.
  void closeWhenIdle() {
    net::post(strand_, [self = shared_from_this()] {
      self->closing_ = true;
      if (!self->busy_) self->close();
    });
  }

  // Called by the router on the strand.
  void respond(int status, const std::string& body, const std::string& content_type = "application/json",
               const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    http::response<http::string_body> res{http::int_to_status(static_cast<unsigned>(status)), 11};
    res.set(http::field::server, "computron");
    res.set(http::field::content_type, content_type);
    for (const auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(keep_alive_ && !closing_);
    res.body() = body;
    res.prepare_payload();
    std::ostringstream os;
    os << res;
    server_.loop().countHttpResponse(status);
    enqueue(os.str(), true);
  }
  void respondError(const ApiError& error, const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    respond(error.status, errorBody(error), "application/json", headers);
  }

  void beginCompletion(bool chat, const std::string& body) {
    ParsedCompletion parsed = parseCompletion(body, chat, server_.models());
    if (!parsed.request) {
      respondError(parsed.error);
      return;
    }
    request_ = std::move(*parsed.request);
    const ModelInfo& model = server_.models()[static_cast<std::size_t>(request_.model)];
    completion_id_ = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(server_.nextCompletionNumber());
    created_ = static_cast<std::int64_t>(std::time(nullptr));
    collected_.clear();
    collected_text_.clear();
    output_.emplace(model.text, request_.stop);
    sent_ = 0;
    std::vector<std::int32_t> tokens = placeholderTokens(request_, request_.max_tokens, model.vocab);
    std::weak_ptr<Session> weak = weak_from_this();
    auto strand = strand_;
    EmitFn emit = [weak, strand](StreamEvent ev) {
      if (auto self = weak.lock()) {
        net::post(strand, [self, ev = std::move(ev)]() mutable { self->onStreamEvent(std::move(ev)); });
      }
    };
    switch (server_.loop().submit(request_, std::move(tokens), std::move(emit), &ticket_)) {
      case ServingLoop::Submit::kQueueFull: {
        ApiError e;
        e.status = 429;
        e.type = "rate_limit_exceeded";
        e.code = "queue_full";
        e.param = "model";
        e.message = "too many requests queued for model '" + model.name + "' (at most " +
                    std::to_string(server_.options().loop.max_pending_per_model) + "); retry later";
        respondError(e, {{"Retry-After", "1"}});
        return;
      }
      case ServingLoop::Submit::kDraining: {
        ApiError e;
        e.status = 503;
        e.type = "server_unavailable";
        e.message = "the server is shutting down";
        respondError(e);
        return;
      }
      case ServingLoop::Submit::kAccepted:
        break;
    }
    request_open_ = true;
    accepted_at_ = std::chrono::steady_clock::now();
    if (const int limit = server_.options().request_timeout_s; limit > 0) {
      request_timer_.expires_after(std::chrono::seconds(limit));
      request_timer_.async_wait([self = shared_from_this(), ticket = ticket_](beast::error_code ec) {
        if (!ec) self->onRequestTimeout(ticket);
      });
    }
    if (request_.stream) {
      server_.loop().countHttpResponse(200);
      std::string head = "HTTP/1.1 200 OK\r\nServer: computron\r\nContent-Type: text/event-stream\r\n"
                         "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: ";
      head += keep_alive_ ? "keep-alive" : "close";
      head += "\r\n\r\n";
      enqueue(std::move(head), false);
    }
    watchForClose();
  }

 private:
  void readRequest() {
    busy_ = false;
    if (closing_ || closed_) {
      close();
      return;
    }
    parser_.emplace();
    parser_->body_limit(server_.options().max_body_bytes);
    stream_.expires_after(std::chrono::seconds(server_.options().idle_timeout_s));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) { self->onRead(ec); });
  }

  void onRead(beast::error_code ec) {
    if (closed_) return;
    busy_ = true;
    stream_.expires_never();
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      ApiError e;
      e.status = 413;
      e.message = "the request body is larger than the limit of " + std::to_string(server_.options().max_body_bytes) +
                  " bytes";
      respondError(e);
      return;
    }
    if (ec && isHttpParseError(ec) && ec != http::error::end_of_stream && ec != http::error::partial_message) {
      keep_alive_ = false;
      ApiError e;
      e.status = 400;
      e.message = "malformed HTTP request: " + ec.message();
      respondError(e);
      return;
    }
    if (ec) {
      close();
      return;
    }
    http::request<http::string_body> req = parser_->release();
    keep_alive_ = req.keep_alive();
    server_.route(shared_from_this(), req);
  }

  // While a request is with the engine, a read notices the client going away (and cancels the
  // request). Bytes that arrive meanwhile (a pipelined request) stay in the buffer.
  void watchForClose() {
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->onWatch(ec, n);
    });
  }
  void onWatch(beast::error_code ec, std::size_t n) {
    watching_ = false;
    if (closed_) return;
    if (!ec) buffer_.commit(n);
    if (linger_after_watch_) {
      linger_after_watch_ = false;
      lingerClose();
      return;
    }
    if (want_next_) {
      want_next_ = false;
      readRequest();
      return;
    }
    if (ec) close();  // the client went away: close() cancels its request
  }

  // --request-timeout-s: the request is cancelled in the engine (counted `cancelled`) and answered
  // 504, or its stream ends with the error event and [DONE].
  void onRequestTimeout(std::uint64_t ticket) {
    if (!request_open_ || closed_ || ticket != ticket_) return;
    request_open_ = false;
    server_.loop().cancel(ticket_);
    ApiError e;
    e.status = 504;
    e.type = "timeout";
    e.code = "request_timeout";
    e.message = "the request did not finish within " + std::to_string(server_.options().request_timeout_s) +
                " s (--request-timeout-s); it was cancelled";
    if (request_.stream) {
      server_.loop().countHttpResponse(504);
      sendEvent(errorBody(e));
      endStream();
    } else {
      respondError(e);
    }
  }

  // The server's own time for the request: accepted (read and checked) to its last token written
  // out, in ms; clients subtract it from what they measure (docs/serving.md).
  // engine_ms: the engine's own latency (arrival at the engine to the request's finish), when known.
  json timing(Nanos engine_latency = -1) const {
    json t = {{"latency_ms", std::round(millisSince(accepted_at_) * 1000) / 1000}};
    if (engine_latency >= 0) t["engine_ms"] = std::round(static_cast<double>(engine_latency) / 1e3) / 1000;
    return t;
  }

  void onStreamEvent(StreamEvent ev) {
    if (!request_open_ || closed_) return;
    if (ev.kind != StreamEvent::Kind::kTokens) request_timer_.cancel();
    const std::string& model = server_.models()[static_cast<std::size_t>(request_.model)].name;
    switch (ev.kind) {
      case StreamEvent::Kind::kTokens:
        for (std::int32_t t : ev.tokens) {
          ++sent_;
          std::string piece = output_->push(t);
          const bool stopped = output_->stopped();  // a stop string: the output ends here
          const bool last = stopped || sent_ == request_.max_tokens;
          if (last && !stopped) piece += output_->finish();
          if (request_.stream) {
            json chunk = completionChunk(request_, completion_id_, model, created_, {t}, last, stopped ? "stop" : "length", piece);
            if (last) chunk["computron"] = timing();
            sendEvent(chunk.dump());
          } else {
            collected_.push_back(t);
            collected_text_ += piece;
          }
          if (stopped) {
            // The rest of the request's tokens are dropped (it counts as served); answered now.
            request_timer_.cancel();
            request_open_ = false;
            server_.loop().cancel(ticket_, true);
            finishResponse(model, "stop");
            return;
          }
        }
        return;
      case StreamEvent::Kind::kDone:
        request_open_ = false;
        if (request_.stream) {
          // Ended before max_tokens (a stop id): the finish reason goes in a chunk of its own.
          if (sent_ < request_.max_tokens)
            sendEvent(completionChunk(request_, completion_id_, model, created_, {}, true, ev.finish_reason, output_->finish()).dump());
        } else {
          collected_text_ += output_->finish();
        }
        finishResponse(model, ev.finish_reason.empty() ? "length" : ev.finish_reason, ev.engine_latency);
        return;
      case StreamEvent::Kind::kError:
        request_open_ = false;
        if (request_.stream) {
          sendEvent(errorBody(ev.error));
          endStream();
        } else {
          respondError(ev.error);
        }
        return;
    }
  }

  // The end of a served request: the usage chunk and [DONE], or the whole response.
  void finishResponse(const std::string& model, const std::string& finish_reason, Nanos engine_latency = -1) {
    if (request_.stream) {
      if (request_.include_usage) {
        json usage = usageChunk(request_, completion_id_, model, created_, sent_);
        usage["computron"] = timing(engine_latency);
        sendEvent(usage.dump());
      }
      endStream();
    } else {
      json body = completionResponse(request_, completion_id_, model, created_, collected_, finish_reason, collected_text_);
      body["computron"] = timing(engine_latency);
      respond(200, body.dump());
    }
  }

  void sendEvent(const std::string& data) {
    const std::string payload = "data: " + data + "\n\n";
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", payload.size());
    enqueue(size + payload + "\r\n", false);
  }
  void endStream() {
    sendEvent("[DONE]");
    enqueue("0\r\n\r\n", true);
  }

  struct Out {
    std::string bytes;
    bool ends_response = false;
  };
  void enqueue(std::string bytes, bool ends_response) {
    if (closed_) return;
    outbox_.push_back(Out{std::move(bytes), ends_response});
    if (!writing_) writeNext();
  }
  void writeNext() {
    writing_ = true;
    net::async_write(stream_, net::buffer(outbox_.front().bytes),
                     [self = shared_from_this()](beast::error_code ec, std::size_t) { self->onWrite(ec); });
  }
  void onWrite(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    if (ec) {
      close();
      return;
    }
    const bool ends = outbox_.front().ends_response;
    outbox_.pop_front();
    if (!outbox_.empty()) {
      writeNext();
      return;
    }
    if (ends) finishResponse();
  }
  void finishResponse() {
    if (request_open_) return;  // an early error of a streamed request: the stream goes on
    if (!keep_alive_ || closing_) {
      lingerClose();
    } else if (watching_) {
      want_next_ = true;
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
    } else {
      readRequest();
    }
  }

  // Half-close, then read what the client still sends (the rest of an over-long body) until it
  // closes or a moment passes, so it reads our response instead of a connection reset.
  void lingerClose() {
    beast::error_code ignored;
    if (watching_) {  // end the watch read first; its handler comes back here
      linger_after_watch_ = true;
      stream_.socket().cancel(ignored);
      return;
    }
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::chrono::seconds(2));
    drain_ = std::make_shared<std::array<char, 4096>>();
    drainSome();
  }
  void drainSome() {
    stream_.async_read_some(net::buffer(*drain_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec || self->closed_) {
        self->close();
      } else {
        self->drainSome();
      }
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    request_timer_.cancel();
    if (request_open_) {
      request_open_ = false;
      server_.loop().cancel(ticket_);
    }
    outbox_.clear();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  net::strand<net::any_io_executor> strand_;
  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<Out> outbox_;
  std::shared_ptr<std::array<char, 4096>> drain_;
  bool writing_ = false;
  bool keep_alive_ = true;
  bool busy_ = false;      // a request is being answered
  bool closing_ = false;   // the server is shutting down
  bool closed_ = false;
  bool watching_ = false;  // the close-watch read is outstanding
  bool want_next_ = false;
  bool linger_after_watch_ = false;
  // The completion being answered.
  bool request_open_ = false;
  CompletionRequest request_;
  std::uint64_t ticket_ = 0;
  std::string completion_id_;
  std::int64_t created_ = 0;
  int sent_ = 0;
  std::vector<std::int32_t> collected_;
  std::string collected_text_;
  std::optional<OutputText> output_;  // the output's text (empty without a tokenizer) and stop strings
  std::chrono::steady_clock::time_point accepted_at_;
  net::steady_timer request_timer_;  // --request-timeout-s
};

HttpServer::Impl::Impl(EngineConfig config, runtime::RealBackend& backend, ServerOptions options)
    : options_(std::move(options)), loop_(config, backend, options_.loop), acceptor_(net::make_strand(ioc_)), signals_(ioc_) {
  if (const std::string warning = raiseOpenFileLimit(static_cast<std::size_t>(std::max(0, options_.max_connections)));
      !warning.empty())
    std::cerr << "serve: " << warning << "\n";
  for (const ModelDeployment& d : config.models) {
    // Real execution sizes each request's KV cache to --max-context: a longer request is refused here.
    const int limit = options_.loop.max_context > 0 && (d.spec.max_positions <= 0 || options_.loop.max_context < d.spec.max_positions)
                          ? options_.loop.max_context
                          : d.spec.max_positions;
    auto text = options_.text.find(d.name);
    models_.push_back(ModelInfo{d.name, d.spec.vocab, limit, text == options_.text.end() ? nullptr : text->second});
  }
  beast::error_code ec;
  const auto address = net::ip::make_address(options_.host, ec);
  if (ec) throw std::runtime_error("serve: --host '" + options_.host + "' is not an IP address: " + ec.message());
  const tcp::endpoint endpoint(address, options_.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error("serve: cannot listen on " + options_.host + ":" + std::to_string(options_.port) + ": " +
                             ec.message());
  }
  port_ = acceptor_.local_endpoint().port();
}

void HttpServer::Impl::accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
      accept();  // a failed accept (out of descriptors...) does not stop the server
      return;
    }
    if (open_connections_.load() >= options_.max_connections) {
      refuseConnection(std::move(socket));
      accept();
      return;
    }
    ++open_connections_;
    auto session = std::make_shared<Session>(std::move(socket), *this);
    {
      std::lock_guard<std::mutex> lock(sessions_mutex_);
      std::erase_if(sessions_, [](const std::weak_ptr<Session>& s) { return s.expired(); });
      sessions_.push_back(session);
    }
    session->start();
    accept();
  });
}

void HttpServer::Impl::refuseConnection(tcp::socket socket) {
  ApiError e;
  e.status = 503;
  e.type = "server_unavailable";
  e.code = "too_many_connections";
  e.message = "the server has " + std::to_string(options_.max_connections) +
              " connections open (--max-connections); retry later";
  const std::string body = errorBody(e);
  struct Refusal {
    beast::tcp_stream stream;
    std::string text;
    std::array<char, 1024> sink{};
  };
  auto r = std::make_shared<Refusal>(Refusal{beast::tcp_stream(std::move(socket)), {}});
  r->text = "HTTP/1.1 503 Service Unavailable\r\nServer: computron\r\nContent-Type: application/json\r\n"
            "Retry-After: 1\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  loop_.countHttpResponse(503);
  // Written, half-closed, then whatever the client sent is read and dropped (so that it reads the
  // 503 rather than a reset) until it closes or 2 s pass: bounded either way.
  r->stream.expires_after(std::chrono::seconds(2));
  net::async_write(r->stream, net::buffer(r->text), [r](beast::error_code ec, std::size_t) {
    beast::error_code ignored;
    if (ec) {
      r->stream.socket().close(ignored);
      return;
    }
    r->stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    auto drain = std::make_shared<std::function<void()>>();
    *drain = [r, drain] {
      r->stream.async_read_some(net::buffer(r->sink), [r, drain](beast::error_code ec2, std::size_t) {
        if (ec2) {
          beast::error_code ignored2;
          r->stream.socket().close(ignored2);
          *drain = nullptr;  // breaks the cycle
          return;
        }
        (*drain)();
      });
    };
    (*drain)();
  });
}

void HttpServer::Impl::run() {
  accept();
  // Pinned models load at start (an internal request each; the engine's first pass loads them all).
  for (ModelId m : loop_.config().policy.pinned) loop_.requestLoad(m);
  if (options_.handle_signals) {
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.async_wait([this](beast::error_code ec, int signal) {
      if (ec) return;
      stop_signal_ = signal;
      loop_.drain();
    });
  }
  auto work = net::make_work_guard(ioc_);
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, options_.http_threads); ++i) threads.emplace_back([this] { ioc_.run(); });
  try {
    loop_.run();
  } catch (...) {
    ioc_.stop();
    for (auto& t : threads) t.join();
    throw;
  }
  // Every accepted request is answered: stop accepting, close connections once their last
  // response is written, and let the HTTP threads run out of work.
  // On the acceptor's strand, where its accept handlers run: closing it there cannot race one
  // that is re-arming async_accept on another HTTP thread.
  net::post(acceptor_.get_executor(), [this] {
    beast::error_code ignored;
    acceptor_.close(ignored);
    signals_.cancel(ignored);
  });
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> lock(sessions_mutex_);
    for (auto& weak : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
    sessions_.clear();
  }
  for (auto& s : live) s->closeWhenIdle();
  live.clear();
  work.reset();
  for (auto& t : threads) t.join();
}

json HttpServer::Impl::modelJson(std::size_t m, const ModelStatus& status) const {
  const ModelDeployment& d = loop_.config().models[m];
  return {{"id", d.name},
          {"object", "model"},
          {"created", 0},
          {"owned_by", "computron"},
          {"residency", residencyName(status.residency)},
          {"available", status.unavailable.empty()},
          {"unavailable_reason", status.unavailable.empty() ? json(nullptr) : json(status.unavailable)},
          {"tp", d.tp},
          {"pp", d.pp},
          {"parallelism", std::to_string(d.tp) + "x" + std::to_string(d.pp)},
          {"gpus", d.gpus},
          {"max_model_len", models_[m].max_positions},
          {"tokenizer", models_[m].text ? json(models_[m].text->folder) : json(nullptr)},
          {"chat_template", models_[m].text && models_[m].text->chat_template ? "model" : (models_[m].text ? "plain" : "none")},
          {"queued", status.queued},
          {"pending", status.pending},
          {"loads", status.loads},
          {"pinned", std::find(loop_.config().policy.pinned.begin(), loop_.config().policy.pinned.end(),
                               static_cast<ModelId>(m)) != loop_.config().policy.pinned.end()}};
}

void HttpServer::Impl::route(const std::shared_ptr<Session>& session, http::request<http::string_body>& req) {
  std::string target(req.target());
  if (const auto q = target.find('?'); q != std::string::npos) target.resize(q);
  const http::verb method = req.method();
  auto notAllowed = [&](const char* allow) {
    ApiError e;
    e.status = 405;
    e.message = std::string(req.method_string()) + " is not allowed on " + target + " (use " + allow + ")";
    session->respond(e.status, errorBody(e), "application/json", {{"Allow", allow}});
  };
  auto notFound = [&](const std::string& message) {
    ApiError e;
    e.status = 404;
    e.message = message;
    session->respondError(e);
  };
  if (target == "/health") {
    if (method != http::verb::get) return notAllowed("GET");
    if (loop_.draining()) return session->respond(503, json{{"status", "draining"}}.dump());
    // Serving, but some models lost a GPU (its rank died): still 200, saying which.
    json unavailable = json::array();
    const std::vector<ModelStatus> all = loop_.status();
    for (std::size_t m = 0; m < all.size(); ++m)
      if (!all[m].unavailable.empty())
        unavailable.push_back({{"model", loop_.config().models[m].name}, {"reason", all[m].unavailable}});
    if (!unavailable.empty())
      return session->respond(200, json{{"status", "degraded"}, {"unavailable", unavailable}}.dump());
    return session->respond(200, json{{"status", "ok"}}.dump());
  }
  if (target == "/metrics") {
    if (method != http::verb::get) return notAllowed("GET");
    return session->respond(200, loop_.metricsText(), "text/plain; version=0.0.4; charset=utf-8");
  }
  if (target.rfind("/v1/", 0) != 0) return notFound("no endpoint " + target + " (see docs/serving.md)");
  if (!options_.api_key.empty()) {
    const auto auth = req.find(http::field::authorization);
    if (auth == req.end() || auth->value() != "Bearer " + options_.api_key) {
      ApiError e;
      e.status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      e.message = auth == req.end() ? "missing API key: send \"Authorization: Bearer <key>\"" : "invalid API key";
      return session->respondError(e, {{"WWW-Authenticate", "Bearer"}});
    }
  }
  if (target == "/v1/completions" || target == "/v1/chat/completions") {
    if (method != http::verb::post) return notAllowed("POST");
    return session->beginCompletion(target == "/v1/chat/completions", req.body());
  }
  if (target == "/v1/models") {
    if (method != http::verb::get) return notAllowed("GET");
    const std::vector<ModelStatus> status = loop_.status();
    json data = json::array();
    for (std::size_t m = 0; m < status.size(); ++m) data.push_back(modelJson(m, status[m]));
    return session->respond(200, json{{"object", "list"}, {"data", data}}.dump());
  }
  const std::string prefix = "/v1/models/";
  if (target.rfind(prefix, 0) == 0) {
    std::string rest = target.substr(prefix.size());
    std::string action;
    if (const auto slash = rest.find('/'); slash != std::string::npos) {
      action = rest.substr(slash + 1);
      rest.resize(slash);
    }
    std::size_t m = models_.size();
    for (std::size_t i = 0; i < models_.size(); ++i) {
      if (models_[i].name == rest) m = i;
    }
    if (m == models_.size()) {
      ApiError e;
      e.status = 404;
      e.code = "model_not_found";
      e.param = "model";
      e.message = "model '" + rest + "' is not served here (GET /v1/models lists them)";
      return session->respondError(e);
    }
    if (action.empty()) {
      if (method != http::verb::get) return notAllowed("GET");
      return session->respond(200, modelJson(m, loop_.status()[m]).dump());
    }
    if (action == "load") {
      if (method != http::verb::post) return notAllowed("POST");
      switch (loop_.requestLoad(static_cast<ModelId>(m))) {
        case ServingLoop::Submit::kAccepted:
          return session->respond(202, json{{"model", models_[m].name}, {"load", "requested"}}.dump());
        case ServingLoop::Submit::kQueueFull: {
          ApiError e;
          e.status = 429;
          e.type = "rate_limit_exceeded";
          e.message = "too many requests queued for model '" + models_[m].name + "'";
          return session->respondError(e, {{"Retry-After", "1"}});
        }
        case ServingLoop::Submit::kDraining: {
          ApiError e;
          e.status = 503;
          e.type = "server_unavailable";
          e.message = "the server is shutting down";
          return session->respondError(e);
        }
      }
    }
    if (action == "evict") {
      if (method != http::verb::post) return notAllowed("POST");
      // The engine's thread answers within one turn of its loop; it wakes for the request.
      auto answer = loop_.requestEvict(static_cast<ModelId>(m));
      if (answer.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        ApiError e;
        e.status = 503;
        e.type = "server_unavailable";
        e.message = "the engine did not answer the eviction of model '" + models_[m].name + "' within 10 s";
        return session->respondError(e);
      }
      if (const std::optional<std::string> refused = answer.get()) {
        ApiError e;
        e.status = *refused == "the server is shutting down" ? 503 : 409;
        e.type = e.status == 503 ? "server_unavailable" : "invalid_request_error";
        e.code = e.status == 503 ? "" : "model_busy";
        e.message = *refused;
        return session->respondError(e);
      }
      return session->respond(202, json{{"model", models_[m].name}, {"evict", "started"}}.dump());
    }
    return notFound("no endpoint " + target + " (models have /load and /evict)");
  }
  return notFound("no endpoint " + target + " (see docs/serving.md)");
}

HttpServer::HttpServer(EngineConfig config, runtime::RealBackend& backend, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), backend, std::move(options))) {}
HttpServer::~HttpServer() = default;
unsigned short HttpServer::port() const { return impl_->port(); }
void HttpServer::run() { impl_->run(); }
void HttpServer::shutdown() { impl_->shutdown(); }
int HttpServer::stopSignal() const { return impl_->stopSignal(); }

}  // namespace computron::server
