// `computron serve`: an OpenAI-compatible HTTP server (Boost.Beast over Boost.Asio) in front of
// the swapping runtime. HTTP threads parse and check requests, then hand them to the engine's one
// thread (ServingLoop); tokens come back to each connection's strand. docs/serving.md describes
// the API and the metrics.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "common/core/engine.h"
#include "runtime/real_backend.h"
#include "runtime/server/serving_loop.h"

namespace computron::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 8000;  // 0: any free port (see HttpServer::port())
  std::string api_key;         // non-empty: /v1/* need "Authorization: Bearer <api_key>"
  std::size_t max_body_bytes = 1 << 20;
  int http_threads = 2;
  int idle_timeout_s = 60;     // a connection that sends no request this long is closed
  // Open connections at most; one more is answered 503 (`Retry-After: 1`) and closed at once.
  int max_connections = 2048;
  // A completion not finished this long after it was accepted is cancelled (ServingLoop::cancel)
  // and answered 504, or for a stream ended with an error event and [DONE]. 0: no limit.
  int request_timeout_s = 600;
  bool handle_signals = false; // SIGINT / SIGTERM drain the server (the command line sets it)
  LoopOptions loop;
  // Tokenizers and chat templates by model name (serve --tokenizer, or a --checkpoint folder with
  // tokenizer.json); a model without one takes token ids only.
  std::map<std::string, std::shared_ptr<const TextModel>> text;
};

// Raises this process' soft limit on open files (RLIMIT_NOFILE) to its hard limit, as a server of
// `wanted` connections needs one descriptor each. Returns a line to log when the limit stays below
// `wanted`, else an empty string. `computron serve` and `bench serve` call it at start.
std::string raiseOpenFileLimit(std::size_t wanted);

class HttpServer {
 public:
  // Binds and listens at once (so port() is known and clients may connect before run()).
  // Throws std::runtime_error when the address cannot be bound.
  HttpServer(EngineConfig config, runtime::RealBackend& backend, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  unsigned short port() const;
  // Serves until shutdown() (or a signal with handle_signals): the engine runs on the calling
  // thread, the HTTP threads beside it. Returns after every accepted request is answered and
  // every connection closed.
  void run();
  // Any thread: stop accepting requests (new ones get 503), answer the accepted ones, return from run().
  void shutdown();
  // The signal (SIGINT, SIGTERM) that drained the server with handle_signals; 0 if none did.
  int stopSignal() const;

 private:
  class Impl;
  friend class Session;  // a connection (server.cpp) talks to Impl
  std::unique_ptr<Impl> impl_;
};

}  // namespace computron::server
