// `computron serve` end to end on the host-memory device: a server started in the test on an
// ephemeral port, and a Beast HTTP client. Every endpoint; streaming delivers every token in order
// and [DONE]; a request for an offloaded model swaps it in, visibly in /v1/models and /metrics;
// malformed requests each get their 4xx and the server answers the next valid one; a client that
// goes away cancels its request; shutdown drains. No assertion depends on timing: waits poll
// the server's own state, bounded by a count.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/model_spec.h"
#include "runtime/host_device.h"
#include "runtime/real_backend.h"
#include "runtime/server/api.h"
#include "runtime/server/load_generator.h"
#include "runtime/server/server.h"
#include "tests/support/tiny_model.h"
#include "tests/support/vector_source.h"

namespace computron::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using nlohmann::json;

ModelSpec tinySpec() { return fakes::tinyOptSpec(2); }

ModelDeployment deployment(const std::string& name) {
  ModelDeployment d;
  d.name = name;
  d.spec = tinySpec();
  d.gpus = {0};
  d.max_batch = 4;
  return d;
}

// Two models on one GPU whose budget holds one of them: serving the other swaps.
EngineConfig twoModelsOneSlot() {
  EngineConfig c;
  c.models = {deployment("alpha"), deployment("beta")};
  const std::int64_t shard = tinySpec().shard(1, 1, 0, 0).bytes;
  c.gpu_weight_budget = {shard + shard / 2};
  return c;
}

runtime::PlaceholderTimes stepTimes(const ExecuteCommand& cmd, Nanos step) {
  runtime::PlaceholderTimes t;
  t.first_token = step;
  for (const auto& r : cmd.requests) t.finish.push_back(step * std::max(1, r.output_tokens));
  return t;
}

struct Reply {
  int status = 0;
  std::string body;
  http::response<http::string_body> message;
  json doc() const { return json::parse(body); }
};

class Client {
 public:
  explicit Client(unsigned short port) : port_(port) {}

  Reply send(http::verb method, const std::string& target, const std::string& body = "",
             const std::string& auth = "") const {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_));
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    if (!auth.empty()) req.set(http::field::authorization, auth);
    req.body() = body;
    req.prepare_payload();
    http::write(stream, req);
    return readReply(stream);
  }
  Reply get(const std::string& target, const std::string& auth = "") const { return send(http::verb::get, target, "", auth); }
  Reply post(const std::string& target, const std::string& body, const std::string& auth = "") const {
    return send(http::verb::post, target, body, auth);
  }
  // Bytes as they are, for requests a well-behaved client would not send.
  Reply raw(const std::string& bytes) const {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_));
    beast::error_code ec;
    net::write(stream, net::buffer(bytes), ec);  // the server may stop reading early (413)
    return readReply(stream);
  }

  static Reply readReply(beast::tcp_stream& stream) {
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(stream, buffer, parser);
    Reply r;
    r.message = parser.release();
    r.status = static_cast<int>(r.message.result_int());
    r.body = r.message.body();
    return r;
  }

 private:
  unsigned short port_;
};

// The data lines of a server-sent event stream, in order.
std::vector<std::string> sseData(const std::string& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const std::string event = body.substr(pos, end - pos);
    if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
    pos = end + 2;
  }
  return out;
}

std::string metricLine(const std::string& metrics, const std::string& prefix) {
  const auto at = metrics.find(prefix);
  if (at == std::string::npos) return "";
  return metrics.substr(at, metrics.find('\n', at) - at);
}

class ServeTest : public ::testing::Test {
 protected:
  void start(const ServerOptions& given = ServerOptions(), Nanos step = kNanosPerMilli,
             const EngineConfig& config = twoModelsOneSlot()) {
    ServerOptions options = given;
    factory_ = std::make_unique<runtime::HostDeviceFactory>(1);
    runtime::RuntimeOptions ro;
    ro.chunk_bytes = 16 * 1024;
    ro.granule = 64 * 1024;
    ro.host.pin_piece_bytes = 64 * 1024;
    ro.host.threads = 2;
    ro.placeholder_cost = [step](const ExecuteCommand& cmd) { return stepTimes(cmd, step); };
    backend_ = std::make_unique<runtime::RealBackend>(config, *factory_, ro);
    options.port = 0;
    options.loop.predicted_times = ro.placeholder_cost;
    server_ = std::make_unique<HttpServer>(config, *backend_, options);
    thread_ = std::thread([this] { server_->run(); });
    client_ = std::make_unique<Client>(server_->port());
  }
  void stop() {
    if (!thread_.joinable()) return;
    server_->shutdown();
    thread_.join();
  }
  void TearDown() override { stop(); }

  json model(const std::string& name) const {
    const json doc = client_->get("/v1/models").doc();
    for (const auto& m : doc["data"]) {
      if (m["id"] == name) return m;
    }
    return {};
  }
  // A streamed completion on a connection of its own, its response headers read; the connection
  // closes when the returned object goes.
  struct OpenConnection {
    net::io_context ioc;
    beast::tcp_stream stream{ioc};
  };
  std::unique_ptr<OpenConnection> openStream(const std::string& body) const {
    auto c = std::make_unique<OpenConnection>();
    c->stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.body() = body;
    req.prepare_payload();
    http::write(c->stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    http::read_header(c->stream, buffer, parser);
    return c;
  }
  // Polls until `done` holds; false after `tries` looks (a test failure, not a timing assertion).
  template <typename Pred>
  static bool eventually(Pred done, int tries = 2000) {
    for (int i = 0; i < tries; ++i) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  std::unique_ptr<runtime::HostDeviceFactory> factory_;
  std::unique_ptr<runtime::RealBackend> backend_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<Client> client_;
  std::thread thread_;
};

const std::string kValid = R"({"model":"alpha","prompt":[1,2,3],"max_tokens":5,"seed":7})";

TEST_F(ServeTest, HealthModelsAndMetrics) {
  start();
  Reply health = client_->get("/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.doc()["status"], "ok");
  Reply models = client_->get("/v1/models");
  ASSERT_EQ(models.status, 200);
  const json doc = models.doc();
  EXPECT_EQ(doc["object"], "list");
  ASSERT_EQ(doc["data"].size(), 2u);
  EXPECT_EQ(doc["data"][0]["id"], "alpha");
  EXPECT_EQ(doc["data"][0]["residency"], "offloaded");
  EXPECT_EQ(doc["data"][0]["tp"], 1);
  EXPECT_EQ(doc["data"][0]["pp"], 1);
  EXPECT_EQ(doc["data"][0]["gpus"], json::array({0}));
  Reply one = client_->get("/v1/models/beta");
  EXPECT_EQ(one.status, 200);
  EXPECT_EQ(one.doc()["id"], "beta");
  Reply metrics = client_->get("/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.message[http::field::content_type].find("text/plain"), std::string::npos);
  for (const char* name : {"computron_requests_total", "computron_queue_length", "computron_model_residency",
                           "computron_model_loads_total", "computron_loaded_bytes_total",
                           "computron_request_latency_seconds_bucket", "computron_time_to_first_token_seconds_bucket",
                           "computron_gpu_weight_bytes"}) {
    EXPECT_NE(metrics.body.find(name), std::string::npos) << name;
  }
  EXPECT_EQ(metricLine(metrics.body, "computron_model_residency{model=\"alpha\",state=\"offloaded\"}"),
            "computron_model_residency{model=\"alpha\",state=\"offloaded\"} 1");
}

TEST_F(ServeTest, CompletionReturnsEveryTokenWithUsage) {
  start();
  Reply r = client_->post("/v1/completions", kValid);
  ASSERT_EQ(r.status, 200) << r.body;
  const json doc = r.doc();
  EXPECT_EQ(doc["object"], "text_completion");
  EXPECT_EQ(doc["model"], "alpha");
  ASSERT_EQ(doc["choices"].size(), 1u);
  EXPECT_EQ(doc["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(doc["choices"][0]["token_ids"].size(), 5u);
  EXPECT_EQ(doc["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(doc["usage"]["completion_tokens"], 5);
  EXPECT_EQ(doc["usage"]["total_tokens"], 8);
  // Placeholder ids are deterministic in (seed, prompt).
  Reply again = client_->post("/v1/completions", kValid);
  EXPECT_EQ(again.doc()["choices"][0]["token_ids"], doc["choices"][0]["token_ids"]);
  EXPECT_EQ(model("alpha")["residency"], "resident");
}

TEST_F(ServeTest, StreamDeliversEveryTokenInOrderThenDone) {
  start();
  const json expected = client_->post("/v1/completions", kValid).doc()["choices"][0]["token_ids"];
  json req = json::parse(kValid);
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  Reply r = client_->post("/v1/completions", req.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.message[http::field::content_type], "text/event-stream");
  const std::vector<std::string> events = sseData(r.body);
  ASSERT_EQ(events.size(), 5u + 2u);  // one per token, usage, [DONE]
  json streamed = json::array();
  for (std::size_t i = 0; i < 5; ++i) {
    const json chunk = json::parse(events[i]);
    ASSERT_EQ(chunk["choices"][0]["token_ids"].size(), 1u);
    streamed.push_back(chunk["choices"][0]["token_ids"][0]);
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], i == 4 ? json("length") : json(nullptr));
  }
  EXPECT_EQ(streamed, expected);
  EXPECT_EQ(json::parse(events[5])["usage"]["completion_tokens"], 5);
  EXPECT_EQ(events[6], "[DONE]");
}

// Iteration batching with the placeholder: each session step streams one token of every sequence
// in it, and the ids are the same placeholder ids request-level batches give.
TEST_F(ServeTest, IterationBatchingStreamsOneTokenPerStep) {
  start();
  const json expected = client_->post("/v1/completions", kValid).doc()["choices"][0]["token_ids"];
  stop();
  EngineConfig config = twoModelsOneSlot();
  config.policy.batching = Batching::kIteration;
  start(ServerOptions(), kNanosPerMilli, config);
  json req = json::parse(kValid);
  req["stream"] = true;
  Reply r = client_->post("/v1/completions", req.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const std::vector<std::string> events = sseData(r.body);
  ASSERT_EQ(events.size(), 5u + 1u);  // one per token, [DONE]
  json streamed = json::array();
  for (std::size_t i = 0; i < 5; ++i) {
    const json chunk = json::parse(events[i]);
    ASSERT_EQ(chunk["choices"][0]["token_ids"].size(), 1u) << events[i];
    streamed.push_back(chunk["choices"][0]["token_ids"][0]);
  }
  EXPECT_EQ(streamed, expected);
  EXPECT_EQ(events[5], "[DONE]");
  // Several at once, on both models (they swap): every one answered with all its tokens.
  std::vector<std::thread> clients;
  std::vector<int> counts(6, -1);
  for (int i = 0; i < 6; ++i)
    clients.emplace_back([&, i] {
      Client own(server_->port());
      const std::string body = std::string(R"({"model":")") + (i % 2 ? "beta" : "alpha") +
                               R"(","prompt":[1,2],"max_tokens":)" + std::to_string(3 + i) + "}";
      Reply one = own.post("/v1/completions", body);
      if (one.status == 200) counts[static_cast<std::size_t>(i)] = static_cast<int>(one.doc()["choices"][0]["token_ids"].size());
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(counts[static_cast<std::size_t>(i)], 3 + i) << i;
}

TEST_F(ServeTest, ChatCompletionWithTokenIds) {
  start();
  Reply r = client_->post("/v1/chat/completions",
                          R"({"model":"beta","messages":[{"role":"system","content":[4,5]},{"role":"user","content":[6]}],)"
                          R"("max_tokens":3})");
  ASSERT_EQ(r.status, 200) << r.body;
  const json doc = r.doc();
  EXPECT_EQ(doc["object"], "chat.completion");
  EXPECT_EQ(doc["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(doc["choices"][0]["message"]["token_ids"].size(), 3u);
  EXPECT_EQ(doc["usage"]["prompt_tokens"], 3);
  Reply text = client_->post("/v1/chat/completions", R"({"model":"beta","messages":[{"role":"user","content":"hi"}]})");
  EXPECT_EQ(text.status, 400);
  EXPECT_EQ(text.doc()["error"]["param"], "messages[0].content");
}

TEST_F(ServeTest, RequestForOffloadedModelSwapsItIn) {
  start();
  ASSERT_EQ(client_->post("/v1/completions", kValid).status, 200);
  EXPECT_EQ(model("alpha")["residency"], "resident");
  EXPECT_EQ(model("beta")["residency"], "offloaded");
  Reply r = client_->post("/v1/completions", R"({"model":"beta","prompt":[9],"max_tokens":2})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(model("beta")["residency"], "resident");
  EXPECT_EQ(model("beta")["loads"], 1);
  // alpha's eviction completes on the engine's thread; poll for it.
  EXPECT_TRUE(eventually([&] { return model("alpha")["residency"] == "offloaded"; }));
  const std::string metrics = client_->get("/metrics").body;
  EXPECT_EQ(metricLine(metrics, "computron_model_loads_total{model=\"beta\"}"), "computron_model_loads_total{model=\"beta\"} 1");
  EXPECT_EQ(metricLine(metrics, "computron_model_evictions_total{model=\"alpha\"}"),
            "computron_model_evictions_total{model=\"alpha\"} 1");
  EXPECT_EQ(metricLine(metrics, "computron_model_residency{model=\"beta\",state=\"resident\"}"),
            "computron_model_residency{model=\"beta\",state=\"resident\"} 1");
  EXPECT_EQ(metricLine(metrics, "computron_requests_total{model=\"beta\",outcome=\"ok\"}"),
            "computron_requests_total{model=\"beta\",outcome=\"ok\"} 1");
  const std::string bytes = metricLine(metrics, "computron_loaded_bytes_total{model=\"beta\"}");
  EXPECT_EQ(bytes, "computron_loaded_bytes_total{model=\"beta\"} " + std::to_string(tinySpec().shard(1, 1, 0, 0).bytes));
}

// Admin load then evict: the eviction starts (202) once the model sits resident and idle, it goes
// offloaded and frees its GPU memory; evicting it again is refused (409) naming why; the next
// request loads it again.
TEST_F(ServeTest, AdminLoadAndEvictOnDemand) {
  start();
  Reply refused = client_->post("/v1/models/beta/evict", "");
  EXPECT_EQ(refused.status, 409) << refused.body;
  EXPECT_EQ(refused.doc()["error"]["message"], "model beta is not resident (offloaded)");
  EXPECT_EQ(refused.doc()["error"]["code"], "model_busy");
  Reply load = client_->post("/v1/models/beta/load", "");
  EXPECT_EQ(load.status, 202) << load.body;
  EXPECT_TRUE(eventually([&] { return model("beta")["residency"] == "resident"; }));
  // The admin load's one-token request may still be finishing: wait until beta is idle.
  Reply evict;
  EXPECT_TRUE(eventually([&] {
    evict = client_->post("/v1/models/beta/evict", "");
    return evict.status != 409 || evict.doc()["error"]["message"] != "model beta is running a batch";
  }));
  EXPECT_EQ(evict.status, 202) << evict.body;
  EXPECT_EQ(evict.doc()["evict"], "started");
  EXPECT_TRUE(eventually([&] { return model("beta")["residency"] == "offloaded"; }));
  const std::string metrics = client_->get("/metrics").body;
  EXPECT_EQ(metricLine(metrics, "computron_model_evictions_total{model=\"beta\"}"),
            "computron_model_evictions_total{model=\"beta\"} 1");
  Reply again = client_->post("/v1/models/beta/evict", "");
  EXPECT_EQ(again.status, 409);
  Reply r = client_->post("/v1/completions", R"({"model":"beta","prompt":[9],"max_tokens":2})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(model("beta")["loads"], 2);
  EXPECT_EQ(client_->post("/v1/models/gamma/load", "").status, 404);
  EXPECT_EQ(client_->post("/v1/models/gamma/evict", "").status, 404);
  EXPECT_EQ(client_->get("/v1/models/beta/load").status, 405);
  EXPECT_EQ(client_->get("/v1/models/beta/evict").status, 405);
}

struct BadCase {
  std::string name;
  std::string target;
  std::string body;
  int status;
  std::string param;  // "" = not checked
};

TEST_F(ServeTest, MalformedRequestsGetTheir4xxAndTheServerKeepsServing) {
  ServerOptions options;
  options.max_body_bytes = 4096;
  start(options);
  const std::vector<BadCase> cases = {
      {"broken json", "/v1/completions", R"({"model":"alpha","prompt":[1,2)", 400, ""},
      {"not an object", "/v1/completions", "[1,2,3]", 400, ""},
      {"empty body", "/v1/completions", "", 400, ""},
      {"missing model", "/v1/completions", R"({"prompt":[1]})", 400, "model"},
      {"model not a string", "/v1/completions", R"({"model":3,"prompt":[1]})", 400, "model"},
      {"unknown model", "/v1/completions", R"({"model":"gamma","prompt":[1]})", 404, "model"},
      {"unknown field", "/v1/completions", R"({"model":"alpha","prompt":[1],"best_of":2})", 400, "best_of"},
      {"missing prompt", "/v1/completions", R"({"model":"alpha"})", 400, "prompt"},
      {"text prompt", "/v1/completions", R"({"model":"alpha","prompt":"hello"})", 400, "prompt"},
      {"prompt of floats", "/v1/completions", R"({"model":"alpha","prompt":[1.5]})", 400, "prompt"},
      {"batched prompts", "/v1/completions", R"({"model":"alpha","prompt":[[1],[2]]})", 400, "prompt"},
      {"empty prompt", "/v1/completions", R"({"model":"alpha","prompt":[]})", 400, "prompt"},
      {"token outside vocab", "/v1/completions", R"({"model":"alpha","prompt":[500]})", 400, "prompt"},
      {"negative token", "/v1/completions", R"({"model":"alpha","prompt":[-1]})", 400, "prompt"},
      {"max_tokens string", "/v1/completions", R"({"model":"alpha","prompt":[1],"max_tokens":"5"})", 400, "max_tokens"},
      {"max_tokens zero", "/v1/completions", R"({"model":"alpha","prompt":[1],"max_tokens":0})", 400, "max_tokens"},
      {"over the context", "/v1/completions", R"({"model":"alpha","prompt":[1],"max_tokens":64})", 400, "prompt"},
      {"stream not bool", "/v1/completions", R"({"model":"alpha","prompt":[1],"stream":"yes"})", 400, "stream"},
      {"temperature string", "/v1/completions", R"({"model":"alpha","prompt":[1],"temperature":"hot"})", 400,
       "temperature"},
      {"n of two", "/v1/completions", R"({"model":"alpha","prompt":[1],"n":2})", 400, "n"},
      {"messages missing", "/v1/chat/completions", R"({"model":"alpha"})", 400, "messages"},
      {"bad role", "/v1/chat/completions", R"({"model":"alpha","messages":[{"role":"robot","content":[1]}]})", 400,
       "messages[0].role"},
      {"unknown path", "/v1/embeddings", R"({"model":"alpha"})", 404, ""},
      {"huge body", "/v1/completions", std::string(8192, ' '), 413, ""},
  };
  int answered = 0;
  for (int round = 0; round < 4; ++round) {
    for (const BadCase& c : cases) {
      Reply r = client_->post(c.target, c.body);
      EXPECT_EQ(r.status, c.status) << c.name << ": " << r.body;
      const json doc = json::parse(r.body, nullptr, false);
      ASSERT_TRUE(doc.is_object() && doc.contains("error")) << c.name << ": " << r.body;
      EXPECT_TRUE(doc["error"]["message"].is_string()) << c.name;
      if (!c.param.empty()) {
        EXPECT_EQ(doc["error"]["param"], c.param) << c.name;
      }
      ++answered;
      if (round == 0) {
        Reply ok = client_->post("/v1/completions", kValid);
        EXPECT_EQ(ok.status, 200) << "after " << c.name << ": " << ok.body;
      }
    }
  }
  // Below HTTP: a broken request line, and a body larger than the limit announced up front.
  EXPECT_EQ(client_->raw("NOT HTTP\r\n\r\n").status, 400);
  EXPECT_EQ(client_->raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{").status, 413);
  EXPECT_EQ(client_->get("/v1/completions").status, 405);
  EXPECT_EQ(client_->post("/health", "{}").status, 405);
  answered += 4;
  EXPECT_EQ(answered, 100);
  EXPECT_EQ(client_->post("/v1/completions", kValid).status, 200);
}

TEST_F(ServeTest, ApiKeyGuardsV1) {
  ServerOptions options;
  options.api_key = "sesame";
  start(options);
  Reply missing = client_->post("/v1/completions", kValid);
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.doc()["error"]["code"], "invalid_api_key");
  EXPECT_EQ(client_->post("/v1/completions", kValid, "Bearer wrong").status, 401);
  EXPECT_EQ(client_->get("/v1/models").status, 401);
  EXPECT_EQ(client_->get("/health").status, 200);
  EXPECT_EQ(client_->post("/v1/completions", kValid, "Bearer sesame").status, 200);
}

TEST_F(ServeTest, QueueCapAnswers429WithRetryAfter) {
  ServerOptions options;
  options.loop.max_pending_per_model = 1;
  // Long enough that the first request is still being answered when the second arrives.
  start(options, 50 * kNanosPerMilli);
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.set(http::field::host, "127.0.0.1");
  req.body() = R"({"model":"alpha","prompt":[1],"max_tokens":20,"stream":true})";
  req.prepare_payload();
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  http::read_header(stream, buffer, parser);  // accepted: it now counts against the cap
  Reply second = client_->post("/v1/completions", kValid);
  EXPECT_EQ(second.status, 429);
  EXPECT_EQ(second.message["Retry-After"], "1");
  EXPECT_EQ(second.doc()["error"]["code"], "queue_full");
  EXPECT_EQ(client_->post("/v1/completions", R"({"model":"beta","prompt":[1],"max_tokens":1})").status, 200);
  http::read(stream, buffer, parser);
  EXPECT_EQ(sseData(parser.get().body()).back(), "[DONE]");
}

TEST_F(ServeTest, ClientThatGoesAwayCancelsItsRequest) {
  start({}, 20 * kNanosPerMilli);
  openStream(R"({"model":"alpha","prompt":[1],"max_tokens":20,"stream":true})");  // closed at once
  EXPECT_TRUE(eventually([&] {
    const std::string m = client_->get("/metrics").body;
    return metricLine(m, "computron_requests_total{model=\"alpha\",outcome=\"cancelled\"}") ==
               "computron_requests_total{model=\"alpha\",outcome=\"cancelled\"} 1" &&
           metricLine(m, "computron_requests_pending{model=\"alpha\"}") == "computron_requests_pending{model=\"alpha\"} 0";
  }));
  EXPECT_EQ(client_->post("/v1/completions", kValid).status, 200);
}

// A request still queued in the engine when its client goes leaves the queue at once: beta's
// request waits behind alpha's long batch (one GPU slot), its client closes, and beta is never
// loaded; without the core's cancel it would be served (and beta loaded) once alpha finished.
TEST_F(ServeTest, ClientThatGoesAwayTakesItsQueuedRequestOutOfTheEngine) {
  start({}, 50 * kNanosPerMilli);
  Reply first;
  // 60 tokens of 50 ms: 3 s in its batch (the tiny model holds 64 positions). Joined on any exit.
  std::jthread long_one([&] { first = client_->post("/v1/completions", R"({"model":"alpha","prompt":[1],"max_tokens":60})"); });
  ASSERT_TRUE(eventually([&] { return model("alpha")["pending"] == 1 && model("alpha")["queued"] == 0; }));
  {
    auto open = openStream(R"({"model":"beta","prompt":[1],"max_tokens":2,"stream":true})");
    EXPECT_TRUE(eventually([&] { return model("beta")["queued"] == 1; }));
  }  // closed while queued
  EXPECT_TRUE(eventually([&] {
    const std::string m = client_->get("/metrics").body;
    return metricLine(m, "computron_requests_total{model=\"beta\",outcome=\"cancelled\"}") ==
           "computron_requests_total{model=\"beta\",outcome=\"cancelled\"} 1";
  }));
  EXPECT_EQ(model("beta")["queued"], 0);
  long_one.join();
  EXPECT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(model("beta")["loads"], 0);  // never loaded for a request nobody waits for
  EXPECT_EQ(model("beta")["residency"], "offloaded");
}

TEST_F(ServeTest, ShutdownAnswersAcceptedRequestsThenReturns) {
  start({}, 10 * kNanosPerMilli);
  Reply inflight;
  std::thread client([&] { inflight = client_->post("/v1/completions", R"({"model":"alpha","prompt":[1],"max_tokens":20})"); });
  ASSERT_TRUE(eventually([&] { return model("alpha")["pending"] == 1; }));
  server_->shutdown();
  client.join();
  EXPECT_EQ(inflight.status, 200) << inflight.body;
  EXPECT_EQ(inflight.doc()["choices"][0]["token_ids"].size(), 20u);
  thread_.join();  // run() returned: every accepted request answered
}

using ListSource = fakes::VectorSource;

TEST_F(ServeTest, LoadGeneratorGetsEveryRequestAnsweredOnce) {
  start();
  std::vector<Request> requests;
  for (int i = 0; i < 30; ++i) {
    Request r;
    r.id = i;
    r.model = i % 3 == 0 ? 1 : 0;
    r.arrival = i * kNanosPerMilli;
    r.prompt_tokens = 4;
    r.output_tokens = 1 + i % 4;
    requests.push_back(r);
  }
  ListSource source(requests);
  LoadOptions lo;
  lo.model_names = {"alpha", "beta"};
  lo.vocab = {500, 500};
  lo.time_limit = 120 * kNanosPerSecond;
  LoadTarget target = parseUrl("http://127.0.0.1:" + std::to_string(server_->port()));
  std::multiset<RequestId> answered;
  std::int64_t tokens = 0;
  const LoadStats stats = runLoad(target, source, lo, [&](const RequestRecord& r) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_LE(r.first_token, r.finish);
    answered.insert(r.request.id);
    tokens += r.request.output_tokens;
  });
  EXPECT_EQ(stats.sent, 30);
  EXPECT_EQ(stats.ok, 30);
  EXPECT_EQ(stats.failed, 0);
  EXPECT_EQ(stats.tokens, tokens);
  ASSERT_EQ(answered.size(), 30u);
  for (RequestId id = 0; id < 30; ++id) EXPECT_EQ(answered.count(id), 1u) << id;
}

// The same with 500 requests over a pool of 100 keep-alive connections: each answered once
// (the generator's own check, and the server's count of ok requests).
TEST_F(ServeTest, LoadGeneratorPoolAnswersEveryRequestOnce) {
  start();
  std::vector<Request> requests;
  for (int i = 0; i < 500; ++i) {
    Request r;
    r.id = i;
    r.model = i % 5 == 0 ? 1 : 0;
    r.arrival = 0;
    r.prompt_tokens = 3;
    r.output_tokens = 1 + i % 3;
    requests.push_back(r);
  }
  ListSource source(requests);
  LoadOptions lo;
  lo.model_names = {"alpha", "beta"};
  lo.vocab = {500, 500};
  lo.connections = 100;
  lo.time_limit = 300 * kNanosPerSecond;
  LoadTarget target = parseUrl("http://127.0.0.1:" + std::to_string(server_->port()));
  std::multiset<RequestId> answered;
  const LoadStats stats = runLoad(target, source, lo, [&](const RequestRecord& r) {
    EXPECT_TRUE(r.ok) << r.error;
    answered.insert(r.request.id);
  });
  EXPECT_EQ(stats.sent, 500);
  EXPECT_EQ(stats.ok, 500);
  EXPECT_TRUE(stats.exactlyOnce()) << stats.unanswered << " unanswered, " << stats.answered_twice << " twice";
  EXPECT_EQ(stats.added_latency.size(), 500u);  // every last event carried computron.latency_ms
  EXPECT_EQ(stats.connects, 100);  // each pooled connection opened once, and used
  ASSERT_EQ(answered.size(), 500u);
  for (RequestId id = 0; id < 500; ++id) EXPECT_EQ(answered.count(id), 1u) << id;
  const std::string metrics = client_->get("/metrics").body;
  EXPECT_EQ(metricLine(metrics, "computron_requests_total{model=\"alpha\",outcome=\"ok\"}"),
            "computron_requests_total{model=\"alpha\",outcome=\"ok\"} 400");
  EXPECT_EQ(metricLine(metrics, "computron_requests_total{model=\"beta\",outcome=\"ok\"}"),
            "computron_requests_total{model=\"beta\",outcome=\"ok\"} 100");
}

// --max-connections: with 2 open, a third connection gets 503 (Retry-After, OpenAI error shape)
// and is closed; once one of the two goes, a new one is served.
TEST_F(ServeTest, ConnectionsBeyondTheCapAre503AndClosed) {
  ServerOptions options;
  options.max_connections = 2;
  start(options);
  net::io_context ioc;
  auto open = [&] {
    auto s = std::make_unique<tcp::socket>(ioc);
    s->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
    return s;
  };
  auto first = open();
  auto second = open();
  // The two are counted once accepted: a third is refused as soon as they are.
  Reply refused;
  ASSERT_TRUE(eventually([&] {
    refused = client_->get("/health");
    return refused.status == 503;
  }));
  EXPECT_EQ(refused.message["Retry-After"], "1");
  EXPECT_FALSE(refused.message.keep_alive());
  EXPECT_EQ(refused.doc()["error"]["code"], "too_many_connections");
  first->close();
  EXPECT_TRUE(eventually([&] { return client_->get("/health").status == 200; }));
  second->close();
  // Until the server has seen `second` go, the metrics request itself may be refused: ask again.
  EXPECT_TRUE(eventually([&] {
    return !metricLine(client_->get("/metrics").body, "computron_http_responses_total{code=\"503\"}").empty();
  }));
}

// --request-timeout-s: a request that outlasts it is answered 504 (a stream: an error event, then
// [DONE]) and counted cancelled. Tokens take 1.5 s each here, against a 1 s limit.
TEST_F(ServeTest, RequestTimeoutAnswers504AndCancels) {
  ServerOptions options;
  options.request_timeout_s = 1;
  start(options, 1500 * kNanosPerMilli);
  const Reply plain = client_->post("/v1/completions", R"({"model":"alpha","prompt":[1,2],"max_tokens":2})");
  EXPECT_EQ(plain.status, 504);
  EXPECT_EQ(plain.doc()["error"]["code"], "request_timeout");
  EXPECT_EQ(plain.doc()["error"]["type"], "timeout");
  const Reply streamed =
      client_->post("/v1/completions", R"({"model":"alpha","prompt":[1,2],"max_tokens":2,"stream":true})");
  EXPECT_EQ(streamed.status, 200);
  const std::vector<std::string> events = sseData(streamed.body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(json::parse(events[events.size() - 2])["error"]["code"], "request_timeout");
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_TRUE(eventually([&] {
    return metricLine(client_->get("/metrics").body, "computron_requests_total{model=\"alpha\",outcome=\"cancelled\"}") ==
           "computron_requests_total{model=\"alpha\",outcome=\"cancelled\"} 2";
  }));
}

// Every answer carries the server's own latency for the client to subtract: the last event of a
// stream, and the body of a plain response.
TEST_F(ServeTest, AnswersCarryTheServersLatency) {
  start();
  const Reply plain = client_->post("/v1/completions", kValid);
  ASSERT_EQ(plain.status, 200);
  EXPECT_GE(plain.doc()["computron"]["latency_ms"].get<double>(), 0.0);
  const Reply streamed =
      client_->post("/v1/completions", R"({"model":"alpha","prompt":[1,2,3],"max_tokens":3,"stream":true})");
  const std::vector<std::string> events = sseData(streamed.body);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_FALSE(json::parse(events[0]).contains("computron"));
  EXPECT_GE(json::parse(events[2])["computron"]["latency_ms"].get<double>(), 0.0);
}

// policy.pinned: the pinned model loads at start, without a request, shows "pinned": true, is not
// evicted when the others swap through the remaining room, and an admin evict of it answers 409.
TEST_F(ServeTest, PinnedModelLoadsAtStartAndStays) {
  EngineConfig config;
  config.models = {deployment("alpha"), deployment("beta"), deployment("gamma")};
  const std::int64_t shard = tinySpec().shard(1, 1, 0, 0).bytes;
  config.gpu_weight_budget = {2 * shard + shard / 2};  // alpha and one other
  config.policy.pinned = {0};
  start(ServerOptions(), kNanosPerMilli, config);
  EXPECT_TRUE(eventually([&] { return model("alpha")["residency"] == "resident"; }));
  EXPECT_EQ(model("alpha")["pinned"], true);
  EXPECT_EQ(model("beta")["pinned"], false);
  for (const char* name : {"beta", "gamma", "beta", "gamma"}) {
    const Reply r = client_->post("/v1/completions", std::string(R"({"model":")") + name + R"(","prompt":[1],"max_tokens":1})");
    EXPECT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(model("alpha")["residency"], "resident");
  EXPECT_EQ(model("alpha")["loads"], 1);
  EXPECT_GE(model("beta")["loads"].get<int>(), 2);
  const Reply evict = client_->post("/v1/models/alpha/evict", "");
  EXPECT_EQ(evict.status, 409);
  EXPECT_EQ(evict.doc()["error"]["code"], "model_busy");
  EXPECT_NE(evict.doc()["error"]["message"].get<std::string>().find("pinned"), std::string::npos);
}

TEST(ServeApi, ParseUrl) {
  const LoadTarget t = parseUrl("http://localhost:8123/base/");
  EXPECT_EQ(t.host, "localhost");
  EXPECT_EQ(t.port, 8123);
  EXPECT_EQ(t.path_prefix, "/base");
  EXPECT_EQ(parseUrl("http://10.0.0.1").port, 80);
  EXPECT_THROW(parseUrl("https://x"), ConfigError);
  EXPECT_THROW(parseUrl("http://x:99999"), ConfigError);
}

TEST(ServeApi, ErrorShapeAndPlaceholderTokens) {
  ApiError e;
  e.status = 400;
  e.message = "m";
  e.param = "prompt";
  const json doc = json::parse(errorBody(e));
  EXPECT_EQ(doc["error"]["message"], "m");
  EXPECT_EQ(doc["error"]["type"], "invalid_request_error");
  EXPECT_EQ(doc["error"]["param"], "prompt");
  EXPECT_TRUE(doc["error"]["code"].is_null());
  CompletionRequest r;
  r.prompt = {1, 2};
  const auto a = placeholderTokens(r, 10, 7);
  EXPECT_EQ(a, placeholderTokens(r, 10, 7));
  for (auto t : a) EXPECT_TRUE(t >= 0 && t < 7);
  r.seed = 1;
  EXPECT_NE(a, placeholderTokens(r, 10, 7));
}

}  // namespace
}  // namespace computron::server
