// The client side of `computron bench serve`: sends a request stream to an OpenAI-compatible
// server at the requests' arrival times (open loop; closed-loop sources get their completions
// back), each as a streamed /v1/completions call on its own connection, and reports each request
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
};

struct LoadStats {
  std::int64_t sent = 0;
  std::int64_t ok = 0;
  std::int64_t failed = 0;
  std::int64_t tokens = 0;  // tokens received in all
  std::map<int, std::int64_t> statuses;  // HTTP status -> count (0: no response)
  Nanos end = 0;
};

// Runs `source` against the server; `done` gets every request's record on the calling thread, in
// completion order. Throws std::runtime_error when the run exceeds options.time_limit.
LoadStats runLoad(const LoadTarget& target, RequestSource& source, const LoadOptions& options,
                  const std::function<void(const RequestRecord&)>& done);

}  // namespace computron::server
