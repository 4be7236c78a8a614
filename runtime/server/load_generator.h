// The client side of `computron bench serve`: sends a request stream to an OpenAI-compatible
// server at the requests' arrival times (open loop; closed-loop sources get their completions
// back), each as a streamed /v1/completions call on its own connection, or with
// LoadOptions::connections over a pool of keep-alive connections, and reports each request
// as a RequestRecord with the times seen from the client: first token = the first event carrying
// a token, finish = the last one. Works against `computron serve` and any server that speaks the
// same API with token-id prompts.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/core/engine.h"
#include "common/workload.h"

namespace computron::server {

struct LoadTarget {
  std::string host = "127.0.0.1";
  unsigned short port = 8000;
  std::string path_prefix;  // before /v1/completions (a URL's path)
  std::string api_key;
};
// Reads http://HOST[:PORT][/PREFIX]; throws ConfigError naming the URL when it is not one.
LoadTarget parseUrl(const std::string& url);

struct LoadOptions {
  std::vector<std::string> model_names;  // by ModelId
  std::vector<int> vocab;                // by ModelId: prompt ids are drawn below it
  int threads = 2;
  Nanos time_limit = 600 * kNanosPerSecond;
  // 0: each request on a connection of its own, opened when it is due. N: a pool of N keep-alive
  // connections, each sending its requests one after another; a request due while every
  // connection is busy waits (in arrival order) for the first to come free, so arrivals keep
  // their times only as far as N requests in flight allow. Its latency counts from when it is sent.
  int connections = 0;
};

struct LoadStats {
  std::int64_t sent = 0;
  std::int64_t ok = 0;
  std::int64_t failed = 0;
  std::int64_t tokens = 0;  // tokens received in all
  std::map<int, std::int64_t> statuses;  // HTTP status -> count (0: no response)
  Nanos end = 0;
  // Exactly once: every request sent is answered once. `unanswered`: requests with no outcome when
  // the run ended; `answered_twice`: a second outcome for a request, a second [DONE] in one
  // response, more tokens than max_tokens, or a completion id ("id") that answered another
  // request too. Both 0 in a clean run.
  std::int64_t unanswered = 0;
  std::int64_t answered_twice = 0;
  bool exactlyOnce() const { return unanswered == 0 && answered_twice == 0; }
  // Per ok request whose last event carried the server's own latency (`computron.latency_ms`,
  // docs/serving.md): the client's latency minus the server's, in ns, in completion order.
  std::vector<Nanos> added_latency;
  std::int64_t max_backlog = 0;  // with a pool: most requests waiting for a free connection
  std::int64_t connects = 0;     // connections opened (a pool opens each once, unless one breaks)
};

// Runs `source` against the server; `done` gets every request's record on the calling thread, in
// completion order. Throws std::runtime_error when the run exceeds options.time_limit.
LoadStats runLoad(const LoadTarget& target, RequestSource& source, const LoadOptions& options,
                  const std::function<void(const RequestRecord&)>& done);

}  // namespace computron::server
