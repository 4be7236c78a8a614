// computron calibrate: measures a profile (docs/specs.md, "Profiles") on this machine's devices
// through the real runtime path: a RealBackend with the real CUDA model execution (or the
// placeholder), driven directly, without the engine. For every (model spec, TP, PP) layout it
// loads the model, times warm prefills over a grid of batch sizes and prompt lengths and decode
// steps over batch sizes and contexts (medians of repeats after unrecorded warm-up runs), the
// realtime path's completion cost (batch_tail_ms) and what the first batch after a reload costs
// beyond a warm one (first_batch_extra_ms). Once per run it times loads (direct alone and two at
// once, multi-path, from a resident copy over NVLink, evictions) and fits the host link's
// bandwidth and latency. The profile is written whole or not at all.
#include <boost/program_options.hpp>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <thread>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/json_reader.h"
#include "common/profile.h"
#include "common/scenario/cli_args.h"
#include "common/scenario/output_files.h"
#include "common/scenario/scenario.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/execution_choice.h"
#include "runtime/device_factory.h"
#include "runtime/real_backend.h"
#ifdef COMPUTRON_HAVE_CUDA
#include "runtime/cuda/copy_bench.h"
#include "runtime/cuda/model_execution.h"
#endif

namespace po = boost::program_options;

namespace computron::runtime {
namespace {

const char* const kCommand = "computron calibrate";
constexpr auto kOperationLimit = std::chrono::seconds(600);  // one load or batch; beyond it the run fails

// One (spec, TP, PP) to calibrate, placed on GPUs 0..tp*pp-1.
struct Layout {
  std::string spec;
  int tp = 1;
  int pp = 1;
  int max_batch = 8;  // the batch grid is capped here (a scenario's max_batch)
  std::string label() const { return spec + " TP=" + std::to_string(tp) + " PP=" + std::to_string(pp); }
};

struct Settings {
  std::vector<int> batches{1, 2, 4, 8};
  std::vector<int> prompts{16, 64, 256, 1024};
  std::vector<int> contexts{16, 64, 256, 1024};
  int decode_tokens = 8;
  int repeats = 5;
  int warmup = 2;
  int gap_ms = 0;            // idle before each timed run of the grids (default: 100 on cuda, 0 on host)
  bool power_probe = false;  // also time a heavy shape back to back after idling: the power model
  int max_context = 0;
  bool loads = true;
  bool quiet = false;
};

double millis(Nanos t) { return static_cast<double>(t) / 1e6; }

std::string fixed(double v, int precision) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << v;
  return s.str();
}

// "1,2,4,8": positive integers, strictly increasing.
std::vector<int> parseAxis(const std::string& text, const std::string& option) {
  std::vector<int> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 1 || v > kMaxRequestTokens)
      throw ConfigError(option + ": '" + item + "' is not an integer from 1 to " + std::to_string(kMaxRequestTokens));
    if (!out.empty() && v <= out.back())
      throw ConfigError(option + ": values must be strictly increasing, got " + std::to_string(out.back()) + " then " +
                        std::to_string(v));
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) throw ConfigError(option + ": needs at least one value");
  return out;
}

// "1x1,2x1": TP x PP.
std::vector<std::pair<int, int>> parseLayouts(const std::string& text) {
  std::vector<std::pair<int, int>> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    const auto x = item.find('x');
    int tp = 0, pp = 0;
    try {
      std::size_t a = 0, b = 0;
      if (x != std::string::npos) {
        tp = std::stoi(item.substr(0, x), &a);
        pp = std::stoi(item.substr(x + 1), &b);
      }
      if (x == std::string::npos || a != x || b != item.size() - x - 1) tp = pp = 0;
    } catch (const std::exception&) {
      tp = pp = 0;
    }
    if (tp < 1 || pp < 1 || tp > 1024 || pp > 1024)
      throw ConfigError("--layouts: '" + item + "' is not TPxPP with positive integers (e.g. 1x1,2x1)");
    if (std::find(out.begin(), out.end(), std::make_pair(tp, pp)) != out.end())
      throw ConfigError("--layouts: " + item + " is given twice");
    out.emplace_back(tp, pp);
  }
  if (out.empty()) throw ConfigError("--layouts: needs at least one TPxPP");
  return out;
}

std::vector<std::string> splitNames(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}


std::string hostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string buildText() {
#ifdef COMPUTRON_VERSION
  std::string version = COMPUTRON_VERSION;
#else
  std::string version = "runtime";
#endif
#ifdef COMPUTRON_GIT_SHA
  version += " " COMPUTRON_GIT_SHA;
#endif
#ifdef COMPUTRON_HAVE_CUDA
  version += ", CUDA built in";
#else
  version += ", no CUDA";
#endif
#ifdef NDEBUG
  version += ", optimised";
#else
  version += ", debug";
#endif
  return version;
}

// The NVIDIA kernel driver's version ("580.159.04"), from /proc ("NVRM version: NVIDIA UNIX Open
// Kernel Module for x86_64  580.159.04  Release Build ..."); empty when not readable.
std::string nvidiaDriverVersion() {
  std::ifstream in("/proc/driver/nvidia/version");
  std::string line;
  if (!std::getline(in, line)) return {};
  const auto at = line.find("Kernel Module");
  if (at == std::string::npos) return {};
  std::stringstream ss(line.substr(at));
  for (std::string word; ss >> word;) {
    const bool version = std::isdigit(static_cast<unsigned char>(word.front())) != 0 && word.find('.') != std::string::npos &&
                         word.find_first_not_of("0123456789.") == std::string::npos;
    if (version) return word;
  }
  return {};
}

// Completions as they reach the driver's thread, stamped with the backend clock.
class Recorder final : public BackendListener {
 public:
  explicit Recorder(const SteadyClock& clock) : clock_(clock) {}
  struct Load {
    bool ok = false;
    std::string error;
    Nanos at = 0;
  };
  struct Batch {
    BatchResult result;
    Nanos at = 0;
  };
  void loadDone(OpId op, bool ok, const std::string& error) override { loads[op] = {ok, error, clock_.now()}; }
  void evictDone(OpId op) override { evicts[op] = clock_.now(); }
  void batchDone(const BatchResult& result) override { batches[result.batch] = {result, clock_.now()}; }
  std::map<OpId, Load> loads;
  std::map<OpId, Nanos> evicts;
  std::map<BatchId, Batch> batches;

 private:
  const SteadyClock& clock_;
};

// Issues loads, evictions and batches to the backend and pumps its completions until each ends.
class Calibrator {
 public:
  Calibrator(RealBackend& backend, const EngineConfig& config, bool quiet, std::chrono::steady_clock::time_point started)
      : backend_(backend), config_(config), recorder_(backend.clock()), quiet_(quiet), started_(started) {}

  void note(const std::string& text) const {
    if (quiet_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    std::cerr << "calibrate [" << fixed(s, 1) << " s] " << text << "\n";
  }

  const ModelDeployment& model(ModelId id) const { return config_.models[static_cast<std::size_t>(id)]; }

  LoadCommand command(ModelId id, int shard, GpuId gpu, std::vector<RoutePart> route = {}) const {
    LoadCommand c;
    c.model = id;
    c.shard = shard;
    c.gpu = gpu;
    c.bytes = backend_.hostShard(id, shard).bytes;
    c.layout = backend_.hostShard(id, shard).layout;
    c.route = route.empty() ? std::vector<RoutePart>{{gpu, c.bytes, false, -1}} : std::move(route);
    return c;
  }

  // Issues every load at once; each one's time from its issue to its loadDone, in ms.
  std::vector<double> load(std::vector<LoadCommand> cmds) {
    std::vector<Nanos> issued;
    for (auto& cmd : cmds) {
      cmd.op = next_op_++;
      issued.push_back(backend_.clock().now());
      backend_.load(cmd);
    }
    std::vector<double> ms;
    for (std::size_t i = 0; i < cmds.size(); ++i) {
      const OpId op = cmds[i].op;
      waitFor([&] { return recorder_.loads.count(op) > 0; }, "load of " + model(cmds[i].model).name);
      const Recorder::Load done = recorder_.loads.at(op);
      recorder_.loads.erase(op);
      if (!done.ok) throw std::runtime_error("calibrate: " + done.error);
      ms.push_back(millis(done.at - issued[i]));
    }
    backend_.takeLoadRecords();  // not kept: a long run would pile them up
    return ms;
  }

  // Evicts and waits; the time from the command to evictDone in ms.
  double evict(ModelId id, int shard, GpuId gpu) {
    const OpId op = next_op_++;
    const Nanos issued = backend_.clock().now();
    backend_.evict({op, id, shard, gpu, backend_.hostShard(id, shard).bytes});
    waitFor([&] { return recorder_.evicts.count(op) > 0; }, "eviction");
    const Nanos at = recorder_.evicts.at(op);
    recorder_.evicts.erase(op);
    return millis(at - issued);
  }

  // Loads every shard of the model on its GPUs at once (direct routes); the slowest shard's ms.
  double loadModel(ModelId id) {
    std::vector<LoadCommand> cmds;
    const ModelDeployment& d = model(id);
    for (int s = 0; s < d.numShards(); ++s) cmds.push_back(command(id, s, d.gpus[static_cast<std::size_t>(s)]));
    const std::vector<double> ms = load(cmds);
    return *std::max_element(ms.begin(), ms.end());
  }

  void evictModel(ModelId id) {
    const ModelDeployment& d = model(id);
    for (int s = 0; s < d.numShards(); ++s) evict(id, s, d.gpus[static_cast<std::size_t>(s)]);
  }

  struct BatchTiming {
    double prefill_ms = 0;  // issue to first token
    double decode_ms = 0;   // first token to the last finish
    double tail_ms = 0;     // last finish to the completion reaching this thread
  };

  // One batch of `batch` requests of `prompt` tokens and `output` tokens each, run to its end.
  BatchTiming run(ModelId id, int batch, int prompt, int output) {
    const ModelDeployment& d = model(id);
    ExecuteCommand cmd;
    cmd.batch = next_batch_++;
    cmd.model = id;
    cmd.tp = d.tp;
    cmd.pp = d.pp;
    cmd.gpus = d.gpus;
    for (int i = 0; i < batch; ++i) {
      Request r;
      r.id = next_request_++;
      r.model = id;
      r.prompt_tokens = prompt;
      r.output_tokens = output;
      cmd.requests.push_back(r);
    }
    const Nanos issued = backend_.clock().now();
    backend_.execute(cmd);
    const BatchId b = cmd.batch;
    waitFor([&] { return recorder_.batches.count(b) > 0; }, "batch of " + d.name);
    const Recorder::Batch done = recorder_.batches.at(b);
    recorder_.batches.erase(b);
    if (!done.result.ok) throw std::runtime_error("calibrate: batch on " + d.name + " failed: " + done.result.error);
    const Nanos last = done.result.finish.empty() ? done.result.first_token
                                                  : *std::max_element(done.result.finish.begin(), done.result.finish.end());
    return {millis(done.result.first_token - issued), millis(last - done.result.first_token), millis(done.at - last)};
  }

  // How late the realtime driver's thread wakes for a deadline with nothing to deliver (it sleeps
  // in dispatch() until the next arrival): the median lateness over `n` short waits.
  double wakeLatenessMs(int n) {
    std::vector<double> late;
    for (int i = 0; i < n; ++i) {
      const Nanos deadline = backend_.clock().now() + 2 * kNanosPerMilli;
      while (backend_.clock().now() < deadline) backend_.dispatch(deadline, recorder_);
      late.push_back(millis(backend_.clock().now() - deadline));
    }
    return median(late);
  }

 private:
  template <typename Done>
  void waitFor(Done done, const std::string& what) {
    const auto give_up = std::chrono::steady_clock::now() + kOperationLimit;
    while (!done()) {
      if (std::chrono::steady_clock::now() > give_up)
        throw std::runtime_error("calibrate: " + what + " did not finish in " +
                                 std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kOperationLimit).count()) + " s");
      backend_.dispatch(std::chrono::steady_clock::now() + std::chrono::milliseconds(500), recorder_);
    }
  }

  RealBackend& backend_;
  const EngineConfig& config_;
  Recorder recorder_;
  bool quiet_;
  std::chrono::steady_clock::time_point started_;
  OpId next_op_ = 1;
  BatchId next_batch_ = 1;
  RequestId next_request_ = 1;
};

// A measured value for the profile: finite and > 0 (a clock too coarse to see it gives the least
// positive figure the profile accepts, said on stderr).
double positive(double ms, const std::string& what) {
  if (std::isfinite(ms) && ms > 0) return ms;
  std::cerr << "calibrate: warning: " << what << " measured " << ms << " ms; written as 1e-6 ms\n";
  return 1e-6;
}

struct LayoutResult {
  nlohmann::json profile;
  double cold_extra_ms = 0;  // the layout's first batch (first use of its kernels and communicators)
  double load_ms = 0;
};

LayoutResult calibrateLayout(Calibrator& cal, ModelId id, const Layout& layout, const Settings& s) {
  LayoutResult out;
  std::vector<int> batches;
  for (int b : s.batches)
    if (b <= layout.max_batch) batches.push_back(b);
  const int reference_prompt = std::min(64, s.prompts.back());
  std::vector<double> tails;

  cal.note(layout.label() + ": loading (" + fixed(static_cast<double>(cal.model(id).spec.totalBytes()) / kGB, 2) + " GB)");
  out.load_ms = cal.loadModel(id);
  cal.note(layout.label() + ": loaded in " + fixed(out.load_ms, 1) + " ms");
  const double cold = cal.run(id, 1, reference_prompt, 1).prefill_ms;

  // The warm reference shape for the first batch after a load: B=1, P=64.
  auto measure = [&](int batch, int prompt, int output, bool record_tail) {
    for (int i = 0; i < s.warmup; ++i) cal.run(id, batch, prompt, output);
    std::vector<Calibrator::BatchTiming> runs;
    for (int i = 0; i < s.repeats; ++i) {
      if (s.gap_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.gap_ms));
      runs.push_back(cal.run(id, batch, prompt, output));
      if (record_tail) tails.push_back(runs.back().tail_ms);
    }
    return runs;
  };
  std::vector<double> reference;
  for (const auto& r : measure(1, reference_prompt, 1, true)) reference.push_back(r.prefill_ms);
  const double warm = median(reference);
  out.cold_extra_ms = std::max(0.0, cold - warm);
  cal.note(layout.label() + ": first batch " + fixed(cold, 2) + " ms, warm " + fixed(warm, 2) + " ms (B=1, P=" +
           std::to_string(reference_prompt) + ")");

  nlohmann::json power;
  if (s.power_probe) {
    // How a batch's time moves as the GPU goes from idle to sustained load: after 1.5 s idle, the
    // largest batch at the reference prompt and at 256 tokens (the longest prompt of the grid if
    // shorter: the KV cache is sized for the grids), back to back for 3 s each; then after idle
    // gaps. The last (heaviest) shape gives the profile's power model (powerFromProbe).
    std::vector<int> probe_prompts = {reference_prompt};
    if (std::min(256, s.prompts.back()) > reference_prompt) probe_prompts.push_back(std::min(256, s.prompts.back()));
    for (int p : probe_prompts) {
      const int b = batches.back();
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      const auto t0 = std::chrono::steady_clock::now();
      std::ostringstream line;
      line << layout.label() << ": power probe B=" << b << " P=" << p << " (s since start: ms):";
      computron::PowerProbe probe;
      while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
        const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double ms = cal.run(id, b, p, 1).prefill_ms;
        probe.ramp.emplace_back(since, ms);
        line << ' ' << fixed(since, 3) << ':' << fixed(ms, 2);
      }
      cal.note(line.str());
      for (int gap : {50, 200, 1000}) {
        std::ostringstream after;
        after << layout.label() << ": power probe B=" << b << " P=" << p << " after " << gap << " ms idle:";
        std::vector<double> ms;
        for (int i = 0; i < 5; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(gap));
          ms.push_back(cal.run(id, b, p, 1).prefill_ms);
          after << ' ' << fixed(ms.back(), 2);
        }
        probe.after_gap.emplace_back(gap, median(ms));
        cal.note(after.str());
      }
      power = computron::powerFromProbe(probe);
      power["probe"]["batch"] = b;
      power["probe"]["prompt_tokens"] = p;
      // Does decode heat the GPU like prefill, and does a hot GPU cool while it decodes? The shape
      // right after about 1 s of decode-only batches (the largest batch, 16-token prompts, as many
      // tokens as the KV cache holds), started once from rest and once from 1 s of the shape back
      // to back; five of each, medians. Recorded in the probe; the power model does not use them.
      const int decode_output = std::max(2, s.max_context - 16);
      for (const bool from_hot : {false, true}) {
        std::ostringstream after;
        after << layout.label() << ": power probe B=" << b << " P=" << p << " after 1 s of decode (B=" << b
              << ", " << decode_output << " tokens a batch) from " << (from_hot ? "hot" : "rest") << ":";
        std::vector<double> ms;
        double decode_steps_ms = 0;
        for (int i = 0; i < 5; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1000));
          if (from_hot) {
            const auto h0 = std::chrono::steady_clock::now();
            while (std::chrono::steady_clock::now() - h0 < std::chrono::seconds(1)) cal.run(id, b, p, 1);
          }
          const auto d0 = std::chrono::steady_clock::now();
          while (std::chrono::steady_clock::now() - d0 < std::chrono::seconds(1)) {
            const Calibrator::BatchTiming t = cal.run(id, b, 16, decode_output);
            decode_steps_ms = t.decode_ms / (decode_output - 1);
          }
          ms.push_back(cal.run(id, b, p, 1).prefill_ms);
          after << ' ' << fixed(ms.back(), 2);
        }
        const std::string key = from_hot ? "hot_then_decode_ms" : "rest_then_decode_ms";
        power["probe"][key] = median(ms);
        power["probe"]["decode_step_ms"] = decode_steps_ms;
        after << " (median " << fixed(median(ms), 2) << "; decode step " << fixed(decode_steps_ms, 2) << " ms)";
        cal.note(after.str());
      }
      cal.note(layout.label() + ": power model from B=" + std::to_string(b) + " P=" + std::to_string(p) + ": hot x" +
               fixed(power["hot_factor"].get<double>(), 3) + " after " + fixed(power["heat_ms"].get<double>(), 1) +
               " ms of work, cool again after " + fixed(power["recover_ms"].get<double>(), 0) + " ms idle");
    }
  }

  nlohmann::json prefill_rows = nlohmann::json::array();
  for (int b : batches) {
    std::vector<double> row;
    for (int p : s.prompts) {
      std::vector<double> ms;
      for (const auto& r : measure(b, p, 1, true)) ms.push_back(r.prefill_ms);
      row.push_back(positive(median(ms), layout.label() + " prefill B=" + std::to_string(b) + " P=" + std::to_string(p)));
      cal.note(layout.label() + ": prefill B=" + std::to_string(b) + " P=" + std::to_string(p) + ": " + fixed(row.back(), 3) + " ms");
    }
    prefill_rows.push_back(row);
  }

  nlohmann::json decode_rows = nlohmann::json::array();
  std::vector<int> mean_context;
  for (int c : s.contexts) mean_context.push_back(c + s.decode_tokens / 2);
  for (int b : batches) {
    std::vector<double> row;
    for (int c : s.contexts) {
      std::vector<double> ms;
      for (const auto& r : measure(b, c, s.decode_tokens, true)) ms.push_back(r.decode_ms / (s.decode_tokens - 1));
      row.push_back(positive(median(ms), layout.label() + " decode B=" + std::to_string(b) + " C=" + std::to_string(c)));
      cal.note(layout.label() + ": decode step B=" + std::to_string(b) + " context " + std::to_string(c) + "+" +
               std::to_string(s.decode_tokens) + ": " + fixed(row.back(), 3) + " ms");
    }
    decode_rows.push_back(row);
  }

  // Batches after the GPUs sat idle (a request arriving at a quiet server): the reference shape
  // after sleeping each gap, against the warm median, three times each.
  nlohmann::json idle_gaps = nlohmann::json::array(), idle_extra = nlohmann::json::array();
  for (int gap : {20, 200, 1000}) {
    std::vector<double> after;
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(gap));
      after.push_back(cal.run(id, 1, reference_prompt, 1).prefill_ms);
    }
    idle_gaps.push_back(gap);
    idle_extra.push_back(std::max(0.0, median(after) - warm));
    cal.note(layout.label() + ": after " + std::to_string(gap) + " ms idle +" + fixed(idle_extra.back().get<double>(), 3) +
             " ms");
  }

  // The first batch right after a reload, against the warm median of the same shape. Three
  // reloads, one when a load is slow.
  const int reloads = out.load_ms > 15000 ? 1 : 3;
  std::vector<double> extra;
  for (int i = 0; i < reloads; ++i) {
    cal.evictModel(id);
    cal.loadModel(id);
    extra.push_back(std::max(0.0, cal.run(id, 1, reference_prompt, 1).prefill_ms - warm));
  }
  cal.note(layout.label() + ": first batch after a reload +" + fixed(median(extra), 3) + " ms");

  // A decode graph's capture: the runtime captures one per decode batch size at its first use
  // (and again after the weights move). Up to six batch sizes no run above used, spread evenly
  // over them: the first decode of each against the same batch again, by batch size (captures
  // cost more above the skinny products' rows). Only the decode part of each batch is compared
  // (its prefill is not a graph).
  std::vector<double> capture;
  std::vector<int> capture_sizes;
  {
    std::vector<int> fresh;
    for (int b = 2; b <= layout.max_batch; ++b)
      if (std::find(batches.begin(), batches.end(), b) == batches.end()) fresh.push_back(b);
    std::vector<int> sizes;
    const std::size_t want = std::min<std::size_t>(6, fresh.size());
    for (std::size_t i = 0; i < want; ++i) {
      const int b = fresh[want == 1 ? fresh.size() - 1 : i * (fresh.size() - 1) / (want - 1)];
      if (sizes.empty() || sizes.back() != b) sizes.push_back(b);
    }
    const int tokens = std::min(8, std::max(2, s.max_context - reference_prompt));
    for (int b : sizes) {
      const double first = cal.run(id, b, reference_prompt, tokens).decode_ms;
      const double again = cal.run(id, b, reference_prompt, tokens).decode_ms;
      capture.push_back(std::max(0.0, first - again));
      capture_sizes.push_back(b);
      cal.note(layout.label() + ": decode graph at B=" + std::to_string(b) + ": first decode " + fixed(first, 3) + " ms, again " +
               fixed(again, 3) + " ms");
    }
  }
  cal.evictModel(id);
  if (capture.empty())
    cal.note(layout.label() + ": decode graph capture not measured (every batch size up to max_batch is in the grid)");
  else
    cal.note(layout.label() + ": decode graph capture " + fixed(mean(capture), 3) + " ms on average over " +
             std::to_string(capture.size()) + " batch sizes");

  out.profile = {{"spec", layout.spec},
                 {"tp", layout.tp},
                 {"pp", layout.pp},
                 {"prefill", {{"batch", batches}, {"prompt_tokens", s.prompts}, {"ms", prefill_rows}}},
                 {"decode", {{"batch", batches}, {"context", mean_context}, {"ms", decode_rows}}},
                 {"batch_tail_ms", positive(median(tails), layout.label() + " batch tail")},
                 {"first_batch_extra_ms", median(extra)},
                 {"decode_graph_ms", capture.size() < 2 ? nlohmann::json(capture.empty() ? 0.0 : capture.front())
                                                        : nlohmann::json{{"batch", capture_sizes}, {"ms", capture}}},
                 {"idle", {{"gap_ms", idle_gaps}, {"extra_ms", idle_extra}}}};
  if (!power.is_null()) out.profile["power"] = power;
  return out;
}

// Loads once per run: `big` and `small` are shard 0 of two models of different sizes (small may
// equal big: no fit, the latency is then taken as 0).
nlohmann::json measureLinks(Calibrator& cal, ModelId big, ModelId small, int gpus, const EngineConfig& config,
                            const Settings& s) {
  const int repeats = std::max(1, std::min(s.repeats, 3));
  nlohmann::json measurements = nlohmann::json::array();
  auto record = [&](const std::string& route, int concurrent, GpuId gpu, std::int64_t bytes, double ms) {
    measurements.push_back({{"route", route}, {"concurrent", concurrent}, {"gpu", gpu}, {"bytes", bytes}, {"ms", ms}});
  };
  const LoadCommand big0 = cal.command(big, 0, 0);
  const std::int64_t big_bytes = big0.bytes;
  std::vector<std::pair<double, std::int64_t>> evicts;  // ms, bytes released

  cal.note("loads: warm-up, " + fixed(static_cast<double>(big_bytes) / kGB, 2) + " GB shard on GPU 0");
  cal.load({big0});
  evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);

  std::vector<double> alone;
  for (int i = 0; i < repeats; ++i) {
    alone.push_back(cal.load({big0}).front());
    record("direct", 1, 0, big_bytes, alone.back());
    evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);
  }
  cal.note("loads: direct " + fixed(median(alone), 1) + " ms");
  const LoadCommand small0 = cal.command(small, 0, 0);
  std::vector<double> small_ms;
  if (small != big) {
    for (int i = 0; i < repeats; ++i) {
      small_ms.push_back(cal.load({small0}).front());
      record("direct", 1, 0, small0.bytes, small_ms.back());
      evicts.emplace_back(cal.evict(small, 0, 0), small0.bytes);
    }
    cal.note("loads: direct " + fixed(static_cast<double>(small0.bytes) / kGB, 2) + " GB: " + fixed(median(small_ms), 1) + " ms");
  }

  // Two loads issued together onto GPU 0, the larger first: in issue order (the runtime's one
  // load stream per GPU) the first ends after its own time; sharing the link, after about its
  // time plus the second's. The simulator's `host_loads_in_order` follows the answer.
  std::optional<bool> in_order;
  // Both must fit GPU 0's pool at once (with room for rounding to the pool's granule).
  const bool pair_fits = !config.gpu_weight_budget.empty() &&
                         static_cast<double>(big_bytes + small0.bytes) < 0.95 * static_cast<double>(config.gpu_weight_budget[0]);
  if (small != big && !pair_fits) cal.note("loads: two at once on GPU 0 not measured (they do not fit its weight budget together)");
  if (small != big && pair_fits) {
    try {
      const std::vector<double> pair = cal.load({big0, small0});
      record("direct-same-gpu", 2, 0, big_bytes, pair[0]);
      record("direct-same-gpu", 2, 0, small0.bytes, pair[1]);
      evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);
      evicts.emplace_back(cal.evict(small, 0, 0), small0.bytes);
      const double solo = median(alone), shared_first = median(alone) + median(small_ms);
      in_order = pair[0] < (solo + shared_first) / 2;
      cal.note("loads: two at once on GPU 0: the first " + fixed(pair[0], 1) + " ms (alone " + fixed(solo, 1) +
               "), the second " + fixed(pair[1], 1) + " ms: " + (*in_order ? "in issue order" : "sharing the link"));
    } catch (const std::exception& e) {
      cal.note(std::string("loads: two at once on GPU 0 not measured (") + e.what() + ")");
    }
  }

  std::optional<double> nvlink_gbps;
  std::vector<double> both_ms;  // two shards on two GPUs at once: the later one's time
  if (gpus >= 2) {
    for (int i = 0; i < repeats; ++i) {
      const std::vector<double> both = cal.load({big0, cal.command(big, 0, 1)});
      record("direct", 2, 0, big_bytes, both[0]);
      record("direct", 2, 1, big_bytes, both[1]);
      both_ms.push_back(std::max(both[0], both[1]));
      evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);
      evicts.emplace_back(cal.evict(big, 0, 1), big_bytes);
    }
    // Multi-path: the target's own link and GPU 1's, forwarded over NVLink, split in proportion to
    // the links' bandwidths as the engine's routing does (half and half when it has none).
    double share = 0.5;
    if (config.gpu_link_bandwidth.size() >= 2 && config.gpu_link_bandwidth[0] > 0 && config.gpu_link_bandwidth[1] > 0)
      share = config.gpu_link_bandwidth[0] / (config.gpu_link_bandwidth[0] + config.gpu_link_bandwidth[1]);
    const auto own = static_cast<std::int64_t>(static_cast<double>(big_bytes) * share);
    const LoadCommand multi = cal.command(big, 0, 0, {{0, own, false, -1}, {1, big_bytes - own, false, -1}});
    std::vector<double> mp;
    for (int i = 0; i < repeats; ++i) {
      mp.push_back(cal.load({multi}).front());
      record("multipath", 1, 0, big_bytes, mp.back());
      evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);
    }
    cal.note("loads: multi-path " + fixed(median(mp), 1) + " ms");
    // From a resident copy on GPU 0 to GPU 1 over NVLink.
    cal.load({big0});
    const LoadCommand twin = cal.command(big, 0, 1, {{0, big_bytes, true, -1}});
    std::vector<double> nv;
    for (int i = 0; i < repeats; ++i) {
      nv.push_back(cal.load({twin}).front());
      record("from_device", 1, 1, big_bytes, nv.back());
      evicts.emplace_back(cal.evict(big, 0, 1), big_bytes);
    }
    evicts.emplace_back(cal.evict(big, 0, 0), big_bytes);
    nvlink_gbps = static_cast<double>(big_bytes) / (median(nv) / 1e3) / kGB;
    cal.note("loads: from a resident copy " + fixed(median(nv), 1) + " ms");
  }
  std::vector<double> evict_ms;
  for (const auto& [ms, bytes] : evicts) {
    record("evict", 1, 0, bytes, ms);
    evict_ms.push_back(ms);
  }

  // time = latency + bytes / bandwidth through the two sizes; one size: no latency.
  const double t_big = median(alone) / 1e3;
  double bandwidth = static_cast<double>(big_bytes) / t_big;  // bytes/s
  double latency = 0;                                         // s
  if (!small_ms.empty()) {
    const double t_small = median(small_ms) / 1e3;
    const double db = static_cast<double>(big_bytes - small0.bytes);
    if (db > 0 && t_big > t_small) {
      const double fitted = db / (t_big - t_small);
      const double lat = t_big - static_cast<double>(big_bytes) / fitted;
      if (lat >= 0) {
        bandwidth = fitted;
        latency = lat;
      }
    }
  }
  nlohmann::json links = {{"host_link_gbps", bandwidth / kGB},
                          {"host_link_latency_us", latency * 1e6},
                          {"evict_us", median(evict_ms) * 1e3}};
  if (nvlink_gbps) links["nvlink_gbps"] = *nvlink_gbps;
  if (in_order) links["loads_in_order"] = *in_order;
  // Two GPUs loading at once share what the host gives them: where that is less than twice one
  // link, the profile says so (the simulator then caps the node's links together at this figure).
  if (!both_ms.empty()) {
    const double shared = 2.0 * static_cast<double>(big_bytes) / (median(both_ms) / 1e3 - latency) / kGB;
    if (shared < 2.0 * bandwidth / kGB) links["shared_host_gbps"] = shared;
  }
  links["measurements"] = measurements;
  return links;
}

void printGrid(std::ostream& out, const nlohmann::json& grid, const std::string& tokens_key, const std::string& title) {
  out << "  " << title << " (rows: batch; columns: " << tokens_key << ")\n" << std::setw(10) << "";
  for (const auto& t : grid[tokens_key]) out << std::setw(10) << t.get<int>();
  out << "\n";
  for (std::size_t r = 0; r < grid["batch"].size(); ++r) {
    out << std::setw(10) << grid["batch"][r].get<int>();
    for (const auto& v : grid["ms"][r]) out << std::setw(10) << fixed(v.get<double>(), 3);
    out << "\n";
  }
}

}  // namespace

int calibrateMain(int argc, char** argv) try {
  const auto started = std::chrono::steady_clock::now();
  // The command line, as a shell would take it back, for the profile's provenance.
  std::string command_line = "computron";
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool plain = !arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=,:+-") ==
                                           std::string::npos;
    std::string quoted = "'";
    for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    command_line += " " + (plain ? arg : quoted + "'");
  }
  po::options_description opts("computron calibrate [SCENARIO.json] [options]");
  std::vector<std::string> overrides;
  std::string models_text, layouts_text = "1x1", batches_text = "1,2,4,8", prompts_text = "16,64,256,1024",
                           contexts_text = "16,64,256,1024", out_path = "profile.json";
  std::string device = cudaBuiltIn() ? "cuda" : "host", execution_kind = cudaBuiltIn() ? "real" : "placeholder";
  Settings s;
  double host_memory_gib = 0;
  opts.add_options()("help,h", "show this help")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(),
      "override a scenario field, as for `computron sim` (without a scenario: --set cluster.preset=h200x4)")(
      "models", po::value<std::string>(&models_text), "model presets, comma separated (required without a scenario)")(
      "layouts", po::value<std::string>(&layouts_text)->default_value(layouts_text),
      "TPxPP splits to calibrate each model at, comma separated (without a scenario)")(
      "batches", po::value<std::string>(&batches_text)->default_value(batches_text), "batch sizes of both grids")(
      "prompt-tokens", po::value<std::string>(&prompts_text)->default_value(prompts_text), "prompt lengths of the prefill grid")(
      "contexts", po::value<std::string>(&contexts_text)->default_value(contexts_text),
      "prompt lengths of the decode grid (each point's context is this plus half of --decode-tokens)")(
      "decode-tokens", po::value<int>(&s.decode_tokens)->default_value(s.decode_tokens),
      "output tokens of each decode measurement (at least 2)")(
      "repeats", po::value<int>(&s.repeats)->default_value(s.repeats), "timed runs per grid point (the median is kept)")(
      "warmup", po::value<int>(&s.warmup)->default_value(s.warmup), "untimed runs before them")(
      "gap-ms", po::value<int>(&s.gap_ms),
      "idle milliseconds before each timed run of the grids, so each starts as a served batch does, "
      "from clocks the GPU's power limit has not lowered (0: back to back; default 100 on cuda, 0 on host)")(
      "power-probe", "also time the largest batch back to back after idling, and after idle gaps, and write the power model it gives into each model's entry (`power`: prefill slows after sustained work)")(
      "no-loads", "skip the load measurements (the profile then has no \"links\")")(
      "out,o", po::value<std::string>(&out_path)->default_value(out_path), "the profile file to write")(
      "device", po::value<std::string>(&device)->default_value(device),
      "cuda: the machine's GPUs; host: the host-memory device (with the placeholder; for tests)")(
      "execution", po::value<std::string>(&execution_kind)->default_value(execution_kind, "real on cuda, placeholder on host"),
      "real: the models' decoders on the GPUs; placeholder: the fixed-cost stand-in timed by the cost model")(
      "max-context", po::value<int>(&s.max_context)->default_value(0),
      "real execution: tokens per request the KV cache holds (0: the largest the grids need)")(
      "host-memory-gib", po::value<double>(&host_memory_gib)->default_value(0),
      "host memory the weight store may assume (0: detect from cgroup limit / MemTotal)")(
      "quiet,q", "no progress on stderr");
  std::string scenario_path;
  po::variables_map vm;
  if (auto done = parseScenarioArgs(
          argc, argv, opts, kCommand,
          "\nMeasures a profile (docs/specs.md, \"Profiles\") through the real runtime: per model and TPxPP\n"
          "layout (on GPUs 0..tp*pp-1), warm prefill times over batch x prompt tokens and decode step times\n"
          "over batch x context (medians of --repeats after --warmup runs), the realtime path's completion\n"
          "cost, the first batch after a load and batches after 20, 200 and 1000 ms idle; once per run, load\n"
          "times (direct, two at once, multi-path, from a resident copy) and evictions, with the host link's\n"
          "bandwidth and latency fitted, and how late the realtime driver wakes for a deadline. With a\n"
          "scenario: its models' distinct (spec, tp, pp) and cluster; without: --models and --layouts on\n"
          "the h200x2 preset (or --set cluster.preset=...).\n",
          scenario_path, vm))
    return *done;
  s.quiet = vm.count("quiet") > 0;
  s.loads = vm.count("no-loads") == 0;
  s.power_probe = vm.count("power-probe") > 0;
  auto usage = [&](const std::string& message) { return usageError(kCommand, message, opts); };
  try {
    s.batches = parseAxis(batches_text, "--batches");
    s.prompts = parseAxis(prompts_text, "--prompt-tokens");
    s.contexts = parseAxis(contexts_text, "--contexts");
  } catch (const ConfigError& e) {
    return usage(e.what());
  }
  if (s.decode_tokens < 2 || s.decode_tokens > kMaxRequestTokens)
    return usage("--decode-tokens: must be 2 to " + std::to_string(kMaxRequestTokens));
  if (s.repeats < 1 || s.repeats > 1000) return usage("--repeats: must be 1 to 1000");
  if (s.warmup < 0 || s.warmup > 1000) return usage("--warmup: must be 0 to 1000");
  if (vm.count("gap-ms") == 0) s.gap_ms = device == "cuda" ? 100 : 0;
  if (s.gap_ms < 0 || s.gap_ms > 60000) return usage("--gap-ms: must be 0 to 60000");
  if (s.max_context < 0 || s.max_context > kMaxRequestTokens)
    return usage("--max-context: must be 0 (from the grids) to " + std::to_string(kMaxRequestTokens));
  if (!(host_memory_gib >= 0 && host_memory_gib <= (1 << 20))) return usage("--host-memory-gib: must be 0 (detect) to 1048576");
  if (device != "cuda" && device != "host") return usage("--device: expected cuda or host, got '" + device + "'");

  // Every request of the grids must fit the KV cache: prompt + output tokens.
  const int need_context = std::max(s.prompts.back() + 1, s.contexts.back() + s.decode_tokens);
  if (s.max_context == 0) {
    s.max_context = need_context;
  } else if (s.prompts.back() + 1 > s.max_context) {
    return usage("--prompt-tokens: " + std::to_string(s.prompts.back()) + " prompt tokens + 1 output token exceed --max-context " +
                 std::to_string(s.max_context));
  } else if (s.contexts.back() + s.decode_tokens > s.max_context) {
    return usage("--contexts: " + std::to_string(s.contexts.back()) + " prompt tokens + --decode-tokens " +
                 std::to_string(s.decode_tokens) + " exceed --max-context " + std::to_string(s.max_context));
  }

  // The layouts and the cluster.
  std::vector<Layout> layouts;
  Scenario scenario;
  if (!scenario_path.empty()) {
    if (vm.count("models")) return usage("--models: a scenario's own models are calibrated; give one or the other");
    if (!vm["layouts"].defaulted()) return usage("--layouts: a scenario's own layouts are calibrated; give one or the other");
    scenario = loadScenario(scenario_path, overrides);
    for (std::size_t m = 0; m < scenario.engine.models.size(); ++m) {
      const ModelDeployment& d = scenario.engine.models[m];
      if (!isModelPreset(d.spec.name))
        throw ConfigError(scenario_path + ": models[" + std::to_string(m) + "] '" + d.name + "': spec '" + d.spec.name +
                          "' is not a preset, and a profile names its models by preset");
      auto same = std::find_if(layouts.begin(), layouts.end(),
                               [&](const Layout& l) { return l.spec == d.spec.name && l.tp == d.tp && l.pp == d.pp; });
      if (same == layouts.end()) {
        layouts.push_back({d.spec.name, d.tp, d.pp, std::max(1, d.max_batch)});
      } else {
        same->max_batch = std::max(same->max_batch, d.max_batch);
      }
    }
    for (const Layout& l : layouts)
      if (s.batches.front() > l.max_batch)
        return usage("--batches: every batch size exceeds " + l.label() + "'s max_batch " + std::to_string(l.max_batch));
  } else {
    if (!vm.count("models")) return usage("--models is required without a scenario (e.g. --models opt-13b)");
    std::vector<std::pair<int, int>> splits;
    try {
      splits = parseLayouts(layouts_text);
    } catch (const ConfigError& e) {
      return usage(e.what());
    }
    const std::vector<std::string> names = splitNames(models_text);
    if (names.empty()) return usage("--models: needs at least one preset");
    std::set<std::string> seen;
    for (const std::string& name : names) {
      if (!isModelPreset(name)) {
        std::string known;
        for (const auto& n : modelPresetNames()) known += (known.empty() ? "" : ", ") + n;
        return usage("--models: unknown preset '" + name + "' (presets: " + known + ")");
      }
      if (!seen.insert(name).second) return usage("--models: " + name + " is given twice");
      for (auto [tp, pp] : splits) {
        try {
          modelPreset(name).validateParallel(tp, pp, "--layouts " + std::to_string(tp) + "x" + std::to_string(pp) + " of " + name);
        } catch (const ConfigError& e) {
          return usage(e.what());
        }
        layouts.push_back({name, tp, pp, s.batches.back()});
      }
    }
    // A scenario made of these models, so that --set and the cluster presets work as for `sim`.
    nlohmann::json doc = {{"name", "calibrate"},
                          {"duration_s", 1},
                          {"cluster", {{"preset", "h200x2"}}},
                          {"models", nlohmann::json::array()},
                          {"workload", {{"type", "gamma"}, {"cv", 1}, {"prompt_tokens", 16}, {"output_tokens", 1}}}};
    for (std::size_t i = 0; i < layouts.size(); ++i) {
      const Layout& l = layouts[i];
      doc["models"].push_back({{"name", l.spec + "-" + std::to_string(l.tp) + "x" + std::to_string(l.pp)},
                               {"spec", l.spec},
                               {"tp", l.tp},
                               {"pp", l.pp},
                               {"max_batch", l.max_batch}});
      doc["workload"]["rates"].push_back(1);
    }
    for (const auto& o : overrides) applyOverride(doc, o);
    // Layouts checked against the cluster first, so the message names the option.
    {
      nlohmann::json cluster_only = doc;
      cluster_only["models"] = nlohmann::json::array({{{"name", "probe"}, {"spec", "opt-125m"}}});
      cluster_only["workload"]["rates"] = {1};
      const Scenario probe = parseScenario(cluster_only, ".");
      for (const Layout& l : layouts) {
        if (l.tp * l.pp > probe.cluster.numGpus())
          return usage("--layouts: " + l.label() + " needs " + std::to_string(l.tp * l.pp) + " GPUs, cluster '" +
                       probe.cluster.name + "' has " + std::to_string(probe.cluster.numGpus()));
        std::vector<GpuId> gpus;
        for (int g = 0; g < l.tp * l.pp; ++g) gpus.push_back(g);
        if (auto over = shardOverBudget(modelPreset(l.spec), l.tp, l.pp, gpus, probe.engine.gpu_weight_budget))
          return usage("--layouts: " + l.label() + " needs " + fixed(static_cast<double>(over->bytes) / kGB, 2) + " GB on GPU " +
                       std::to_string(over->gpu) + ", whose weight budget is " +
                       fixed(static_cast<double>(over->budget) / kGB, 2) + " GB; split it over more GPUs");
      }
    }
    scenario = parseScenario(doc, ".");
  }
  for (const Layout& l : layouts) {
    const ModelSpec spec = modelPreset(l.spec);
    if (spec.family().learnedPositions() && need_context > spec.max_positions)
      return usage("--prompt-tokens/--contexts: requests of " + std::to_string(need_context) + " tokens exceed " + l.spec +
                   "'s " + std::to_string(spec.max_positions) + " learned positions");
  }
  checkOutputFilePath(out_path, "--out");

  // The backend: one deployment per layout, each on GPUs 0..n-1, none resident at first.
  const bool real = chooseRealExecution(execution_kind, vm["execution"].defaulted(), device);
  std::unique_ptr<DeviceFactory> factory;
  try {
    factory = makeDeviceFactory(device, scenario.cluster.numGpus());
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(std::string("--device cuda: no usable GPU (") + e.what() + "); --device host runs the placeholder");
  }
  const int gpus = std::min(factory->deviceCount(), scenario.cluster.numGpus());
  if (gpus == 0) throw ConfigError("--device " + device + ": this machine has no GPU; --device host runs the placeholder");
  for (const Layout& l : layouts)
    if (l.tp * l.pp > gpus)
      return usage("--layouts: " + l.label() + " needs " + std::to_string(l.tp * l.pp) + " GPUs, this machine and cluster have " +
                   std::to_string(gpus));

  EngineConfig config = scenario.engine;
  config.models.clear();
  config.future = nullptr;
  for (const Layout& l : layouts) {
    ModelDeployment d;
    d.name = l.spec + "-" + std::to_string(l.tp) + "x" + std::to_string(l.pp);
    d.spec = modelPreset(l.spec);
    d.tp = l.tp;
    d.pp = l.pp;
    d.max_batch = l.max_batch;
    for (int g = 0; g < l.tp * l.pp; ++g) d.gpus.push_back(g);
    config.models.push_back(d);
  }
  // The host link is fitted through two shard sizes. When the layouts give only one, the first
  // model split in two stages adds the smaller one (on GPUs 0 and 1; more host memory, once).
  ModelId big = 0, small = 0;
  if (s.loads) {
    for (std::size_t m = 0; m < layouts.size(); ++m) {
      const auto bytes = [&](std::size_t i) { return config.models[i].spec.shard(config.models[i].tp, config.models[i].pp, 0, 0).bytes; };
      if (bytes(m) > bytes(static_cast<std::size_t>(big))) big = static_cast<ModelId>(m);
      if (bytes(m) < bytes(static_cast<std::size_t>(small))) small = static_cast<ModelId>(m);
    }
    const auto bytesOf = [&](ModelId m) {
      const ModelDeployment& d = config.models[static_cast<std::size_t>(m)];
      return d.spec.shard(d.tp, d.pp, 0, 0).bytes;
    };
    if (static_cast<double>(bytesOf(big)) < 1.5 * static_cast<double>(bytesOf(small))) small = big;
    if (small == big && gpus >= 2) {
      ModelDeployment aux = config.models[0];
      try {
        aux.spec.validateParallel(1, 2, "aux");
        aux.name = aux.spec.name + "-link-fit";
        aux.tp = 1;
        aux.pp = 2;
        aux.gpus = {0, 1};
        aux.max_batch = 1;
        if (aux.spec.shard(1, 2, 0, 0).bytes * 3 <= bytesOf(big) * 2) {
          config.models.push_back(aux);
          small = static_cast<ModelId>(config.models.size() - 1);
          big = 0;
          for (std::size_t m = 0; m < layouts.size(); ++m)
            if (bytesOf(static_cast<ModelId>(m)) > bytesOf(big)) big = static_cast<ModelId>(m);
        }
      } catch (const ConfigError&) {
        // No two-stage split of this model: the fit takes one size.
      }
    }
  }

  RuntimeOptions options;
  options.verify_loads = true;  // load times as the engine sees them: after the device checksum
  options.host.host_memory_limit = static_cast<std::int64_t>(host_memory_gib * static_cast<double>(kGiB));
  std::string execution_text;
  // The placeholder's cost model times batches of these deployments (it may keep a reference to
  // the cluster, so this outlives the backend).
  Scenario timed = scenario;
  timed.engine = config;
  if (real) {
    options.execution = makeModelExecution(device, realExecutionOptions({}, s.max_context, scenario.seed, -1));
    execution_text = "real";
  } else {
    options.placeholder_cost = costModelPlaceholder(timed);
    execution_text = "placeholder";
  }

  // The machine.
  std::string gpu_name = device == "host" ? "host-memory device" : "unknown";
  std::string driver = device == "host" ? "none" : nvidiaDriverVersion();
  int cuda_runtime = 0;
#ifdef COMPUTRON_HAVE_CUDA
  if (device == "cuda") {
    const std::vector<GpuInfo> info = cudaGpus();
    if (!info.empty()) {
      gpu_name = info[0].name;
      cuda_runtime = info[0].runtime_version;
      if (driver.empty()) driver = "CUDA driver API " + std::to_string(info[0].driver_version);
    }
  }
#endif
  if (driver.empty()) driver = "unknown";

  if (!s.quiet)
    std::cerr << "calibrate: " << layouts.size() << " layout(s) on " << gpus << " " << gpu_name << " (" << device << ", "
              << execution_text << " execution, max context " << s.max_context << "); building the host weight store...\n";
  RealBackend backend(config, *factory, options);
  Calibrator cal(backend, config, s.quiet, started);
  {
    const HostStoreStats& hs = backend.store().stats();
    cal.note("host store: " + fixed(static_cast<double>(hs.bytes) / kGB, 2) + " GB filled in " + fixed(hs.fill_seconds, 2) +
             " s, pinned in " + fixed(hs.pin_seconds, 2) + " s");
#ifdef COMPUTRON_HAVE_CUDA
    if (const auto* cuda = dynamic_cast<const CudaModelExecution*>(options.execution.get()))
      cal.note("model execution: executors warmed up in " + fixed(cuda->warmUpSeconds(), 3) + " s (COMPUTRON_WARMUP=0: not)");
#endif
  }

  nlohmann::json links;
  if (s.loads) links = measureLinks(cal, big, small, gpus, config, s);
  nlohmann::json models = nlohmann::json::array();
  std::vector<LayoutResult> results;
  for (std::size_t m = 0; m < layouts.size(); ++m) {
    results.push_back(calibrateLayout(cal, static_cast<ModelId>(m), layouts[m], s));
    models.push_back(results.back().profile);
  }
  const double wake_ms = cal.wakeLatenessMs(200);
  cal.note("realtime: the driver wakes " + fixed(wake_ms, 3) + " ms after a deadline (median of 200)");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  nlohmann::json profile = {{"format", "computron-profile"}, {"version", 1}};
  profile["provenance"] = {{"tool", "computron calibrate"},
                           {"date", utcNow("%Y-%m-%dT%H:%M:%SZ")},
                           {"build", buildText()},
                           {"host", hostName()},
                           {"device", device},
                           {"execution", execution_text},
                           {"gpu", gpu_name},
                           {"gpu_count", gpus},
                           {"driver", driver},
                           {"cuda_runtime", cuda_runtime},
                           {"repeats", s.repeats},
                           {"warmup", s.warmup},
                           {"gap_ms", s.gap_ms},
                           {"decode_tokens", s.decode_tokens},
                           {"max_context", s.max_context},
                           {"seconds", seconds},
                           {"cluster", scenario.cluster.name},
                           {"command", command_line}};
  // Set-up before the first request (not timed by the simulator, which starts with the store built).
  const HostStoreStats& store = backend.store().stats();
  profile["provenance"]["host_store"] = {{"bytes", store.bytes},
                                         {"fill_s", store.fill_seconds},
                                         {"pin_s", store.pin_seconds},
                                         {"threads", store.threads}};
  if (s.loads) profile["links"] = links;
  profile["realtime"] = {{"wake_ms", wake_ms}};
  profile["models"] = models;
  const std::filesystem::path out_file(out_path);
  if (out_file.has_parent_path()) std::filesystem::create_directories(out_file.parent_path());
  writeFileWhole(out_file, [&](std::ostream& o) { o << profile.dump(2) << "\n"; });

  // The table.
  std::ostream& out = std::cout;
  out << "computron calibrate: " << gpus << " x " << gpu_name << ", " << execution_text << " execution, " << fixed(seconds, 1)
      << " s -> " << out_path << "\n";
  for (std::size_t m = 0; m < layouts.size(); ++m) {
    const nlohmann::json& p = models[m];
    out << "\n" << layouts[m].label() << " (load " << fixed(results[m].load_ms, 1) << " ms)\n";
    printGrid(out, p["prefill"], "prompt_tokens", "prefill ms, issue to first token");
    printGrid(out, p["decode"], "context", "decode step ms");
    computron::ProfileGrid prefill;
    for (const auto& b : p["prefill"]["batch"]) prefill.batch.push_back(b.get<double>());
    for (const auto& t : p["prefill"]["prompt_tokens"]) prefill.tokens.push_back(t.get<double>());
    for (const auto& row : p["prefill"]["ms"]) prefill.ms.push_back(row.get<std::vector<double>>());
    const computron::PrefillShape shape = computron::fitPrefillShape(prefill);
    if (shape.measured) {
      const double longest = prefill.tokens.back();
      const double attention = shape.per_pair_ms * 0.5 * (longest + 1);
      out << "  prefill shape: " << fixed(shape.per_token_ms * 1e3, 2) << " us a token + " << fixed(shape.per_pair_ms * 1e6, 3)
          << " ns a causal pair (attention " << fixed(100 * attention / (shape.per_token_ms + attention), 1) << "% of a "
          << static_cast<int>(longest) << "-token prompt)\n";
    } else {
      out << "  prefill shape: not measured (the largest batch needs two prompts of at least "
          << static_cast<int>(computron::kPrefillShapeMinPrompt) << " tokens); the simulator shapes mixed and long prompts by the roofline\n";
    }
    out << "  batch tail " << fixed(p["batch_tail_ms"].get<double>(), 3) << " ms; first batch after a load +"
        << fixed(p["first_batch_extra_ms"].get<double>(), 3) << " ms; the layout's first batch +"
        << fixed(results[m].cold_extra_ms, 3) << " ms; a decode graph's capture ";
    const nlohmann::json& graph = p["decode_graph_ms"];
    if (graph.is_number()) {
      out << fixed(graph.get<double>(), 3) << " ms\n";
    } else {
      for (std::size_t k = 0; k < graph["batch"].size(); ++k)
        out << (k ? ", " : "") << "B=" << graph["batch"][k].get<int>() << " " << fixed(graph["ms"][k].get<double>(), 3);
      out << " ms\n";
    }
  }
  if (s.loads) {
    out << "\nlinks: host " << fixed(links["host_link_gbps"].get<double>(), 2) << " GB/s + "
        << fixed(links["host_link_latency_us"].get<double>(), 1) << " us";
    if (links.contains("nvlink_gbps")) out << ", NVLink copy " << fixed(links["nvlink_gbps"].get<double>(), 2) << " GB/s";
    out << ", evict " << fixed(links["evict_us"].get<double>(), 1) << " us (" << links["measurements"].size()
        << " measurements)\n";
  }
  return 0;
} catch (const ConfigError& e) {
  // As the module entry would say it, so that callers in the same process see the exit code too.
  std::cerr << "error: " << e.what() << "\n";
  return 2;
}

}  // namespace computron::runtime
