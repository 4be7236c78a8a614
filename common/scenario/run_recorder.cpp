#include "common/scenario/run_recorder.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "common/scenario/interrupt.h"
#include "common/scenario/output_files.h"

namespace computron {
namespace {

constexpr int kExactBuckets = 256;
constexpr int kSubBuckets = 128;

// Integer nanoseconds as seconds with all nine decimals: exact and byte-stable.
std::string secondsText(Nanos t) {
  char buf[40];
  const char* sign = t < 0 ? "-" : "";
  Nanos a = t < 0 ? -t : t;
  std::snprintf(buf, sizeof buf, "%s%" PRId64 ".%09" PRId64, sign, a / kNanosPerSecond, a % kNanosPerSecond);
  return buf;
}

// Chrome trace timestamps are microseconds; keep three decimals (nanosecond precision).
std::string microsText(Nanos t) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%" PRId64 ".%03" PRId64, t / 1000, t % 1000);
  return buf;
}

std::string csvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

double round6(double v) { return std::round(v * 1e6) / 1e6; }

// Time per output token after the first, (finish - first_token) / (output_tokens - 1) rounded to
// the nanosecond, of a served request with more than one output token; none otherwise.
std::optional<Nanos> timePerOutputToken(const RequestRecord& r) {
  if (!r.ok || r.request.output_tokens <= 1) return std::nullopt;
  const Nanos decode = std::max<Nanos>(r.finish - r.first_token, 0);
  const Nanos tokens = static_cast<Nanos>(r.request.output_tokens) - 1;
  return (decode + tokens / 2) / tokens;
}

// "gpu2 ..." before "gpu10 ...": digit runs compare as numbers.
struct NaturalLess {
  bool operator()(const std::string& a, const std::string& b) const {
    std::size_t i = 0, j = 0;
    while (i < a.size() && j < b.size()) {
      if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
        std::size_t ie = i, je = j;
        while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
        while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
        const std::string da = a.substr(i, ie - i), db = b.substr(j, je - j);
        const std::size_t za = da.find_first_not_of('0'), zb = db.find_first_not_of('0');
        const std::string na = za == std::string::npos ? "" : da.substr(za), nb = zb == std::string::npos ? "" : db.substr(zb);
        if (na.size() != nb.size()) return na.size() < nb.size();
        if (na != nb) return na < nb;
        i = ie;
        j = je;
        continue;
      }
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
    if ((a.size() - i) != (b.size() - j)) return a.size() - i < b.size() - j;
    return a < b;  // equal up to leading zeros: any fixed order
  }
};

// Track kinds of a GPU's process in the timeline.
enum TrackKind : int { kComputeTrack = 0, kLoadTrack = 1, kEvictionTrack = 2 };

}  // namespace

LatencyHistogram::LatencyHistogram() = default;

int LatencyHistogram::bucketOf(Nanos v) {
  if (v < kExactBuckets) return static_cast<int>(std::max<Nanos>(v, 0));
  auto u = static_cast<std::uint64_t>(v);
  int e = 63 - std::countl_zero(u);  // >= 8
  int mantissa = static_cast<int>((u >> (e - 7)) & (kSubBuckets - 1));
  return kExactBuckets + (e - 8) * kSubBuckets + mantissa;
}

Nanos LatencyHistogram::bucketValue(int b) {
  if (b < kExactBuckets) return b;
  int e = (b - kExactBuckets) / kSubBuckets + 8;
  int mantissa = (b - kExactBuckets) % kSubBuckets;
  std::uint64_t lo = (static_cast<std::uint64_t>(kSubBuckets + mantissa)) << (e - 7);
  std::uint64_t width = 1ULL << (e - 7);
  return static_cast<Nanos>(lo + width / 2);
}

void LatencyHistogram::addToBlocks(int b, std::int64_t n) {
  const std::size_t block = b < kExactBuckets ? 0 : static_cast<std::size_t>(1 + (b - kExactBuckets) / kSubBuckets);
  if (blocks_.size() <= block) blocks_.resize(block + 1);
  auto& counts = blocks_[block];
  if (counts.empty()) counts.assign(block == 0 ? kExactBuckets : kSubBuckets, 0);
  counts[static_cast<std::size_t>(block == 0 ? b : (b - kExactBuckets) % kSubBuckets)] += n;
}

void LatencyHistogram::add(Nanos value) { add(value, 1); }

void LatencyHistogram::add(Nanos value, std::int64_t count) {
  if (count <= 0) return;
  const int b = bucketOf(value);
  if (dense_) {
    addToBlocks(b, count);
  } else {
    const auto it = std::lower_bound(sparse_.begin(), sparse_.end(), b,
                                     [](const std::pair<int, std::int64_t>& e, int key) { return e.first < key; });
    if (it != sparse_.end() && it->first == b) {
      it->second += count;
    } else if (sparse_.size() < kSparseLimit) {
      sparse_.insert(it, {b, count});
    } else {
      dense_ = true;
      for (const auto& [bucket, n] : sparse_) addToBlocks(bucket, n);
      sparse_.clear();
      sparse_.shrink_to_fit();
      addToBlocks(b, count);
    }
  }
  count_ += count;
  // value * count is an integer below 2^64 (about 584 years of nanoseconds), exact in the sum as
  // `count` additions of value would be.
  sum_ += static_cast<long double>(value) * static_cast<long double>(count);
  max_ = std::max(max_, value);
}

double LatencyHistogram::mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_ / count_); }

Nanos LatencyHistogram::quantile(double q) const {
  if (count_ == 0) return 0;
  auto rank = static_cast<std::int64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<std::int64_t>(rank, 1, count_);
  std::int64_t seen = 0;
  for (const auto& [bucket, n] : sparse_) {
    seen += n;
    if (seen >= rank) return std::min(bucketValue(bucket), max_);
  }
  for (std::size_t block = 0; block < blocks_.size(); ++block) {
    const auto& counts = blocks_[block];
    const int first = block == 0 ? 0 : kExactBuckets + static_cast<int>(block - 1) * kSubBuckets;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      seen += counts[i];
      if (seen >= rank) return std::min(bucketValue(first + static_cast<int>(i)), max_);
    }
  }
  return max_;
}

struct RunRecorder::Impl {
  struct ModelStats {
    LatencyHistogram latency, ttft;
    // Time per output token of served requests with more than one output token (after the first),
    // and inter-token gaps as the engine reports them (onTokenGaps).
    LatencyHistogram tpot, itl;
    std::int64_t served = 0, failed = 0, met_slo = 0, waited = 0;
    // Requests whose model has an SLO, and those of them served within it: slo_attainment.
    // (met_slo, for goodput, also counts served requests of models without one.)
    std::int64_t slo_requests = 0, slo_met = 0;
    std::int64_t rejected = 0;  // failed because admission control refused them
    std::int64_t refused = 0;   // failed on arrival: too long for the model or its KV budget
    std::int64_t prompt_tokens = 0, output_tokens = 0;
    std::int64_t loads = 0, evictions = 0, bytes_loaded = 0;
    Nanos load_time = 0;
    Nanos episode_start = -1, episode_end = -1;  // the load in progress (all shards start together)
    Nanos slo = 0;
  };
  const Scenario& scenario;
  std::string backend;
  std::vector<ModelStats> models;
  ModelStats all;
  std::vector<Nanos> gpu_busy;
  std::vector<std::int64_t> link_bytes;  // bytes over each GPU's host link
  std::int64_t nvlink_bytes = 0;
  std::ofstream requests_csv, timeline;
  bool first_trace_event = true;
  std::filesystem::path dir;                // the target folder
  std::unique_ptr<StagedDir> staged;        // where the files are written until the run ends

  Impl(const Scenario& s, std::string b) : scenario(s), backend(std::move(b)) {}

  // Iteration batching: the session drawn on each GPU's compute track until its last step.
  struct OpenSession {
    BatchId id = -1;
    ModelId model = 0;
    Nanos start = 0, end = 0;
    int steps = 0, max_sequences = 0;
    int prefill_steps = 0;
    Nanos step_time = 0, prefill_time = 0;  // summed over its steps (start to end of each)
    bool ok = true;
  };
  std::vector<OpenSession> open_sessions;
  void flushSession(GpuId g) {
    const auto gi = static_cast<std::size_t>(g);
    if (gi >= open_sessions.size() || open_sessions[gi].id < 0) return;
    const OpenSession& o = open_sessions[gi];
    // The steps' own time (without the gaps between them), all and prefill: `computron compare`
    // reads the mean step from it.
    const std::string args = "{\"session\":" + std::to_string(o.id) + ",\"steps\":" + std::to_string(o.steps) +
                             ",\"steps_us\":" + microsText(o.step_time) + ",\"prefill_steps\":" +
                             std::to_string(o.prefill_steps) + ",\"prefill_us\":" + microsText(o.prefill_time) +
                             ",\"max_sequences\":" + std::to_string(o.max_sequences) + ",\"ok\":" + (o.ok ? "true" : "false") + "}";
    span(g, lane(g, kComputeTrack, o.start, o.end), scenario.engine.models[static_cast<std::size_t>(o.model)].name, "session",
         o.start, o.end, args);
    open_sessions[gi].id = -1;
  }

  void traceEvent(const std::string& json) {
    if (!timeline.is_open()) return;
    timeline << (first_trace_event ? "\n" : ",\n") << json;
    first_trace_event = false;
  }
  // `args` is a JSON object's text; written by hand because this runs once per batch and load.
  void span(int pid, int tid, const std::string& name, const char* cat, Nanos start, Nanos end,
            const std::string& args) {
    if (!timeline.is_open()) return;
    std::string e;
    e.reserve(160 + name.size() + args.size());
    e += "{\"ph\":\"X\",\"pid\":";
    e += std::to_string(pid);
    e += ",\"tid\":";
    e += std::to_string(tid);
    e += ",\"name\":";
    e += nlohmann::json(name).dump();
    e += ",\"cat\":";
    e += nlohmann::json(cat).dump();
    e += ",\"ts\":";
    e += microsText(start);
    e += ",\"dur\":";
    e += microsText(end - start);
    e += ",\"args\":";
    e += args;
    e += "}";
    traceEvent(e);
  }

  // Tracks. The Chrome trace format draws the complete ("X") events of one track as a stack, so
  // spans that overlap without nesting (concurrent loads into one GPU, say) may not share one:
  // each kind of span of a process has lanes, one track each, and a span goes on the lowest lane
  // free at its start. A lane is free at `start` when everything on it ended by then; spans are
  // reported when they end, so this is the lowest free lane, and in any order it never overlaps.
  // Thread ids are kind * kLanesPerKind + lane, so tracks sort by kind, then lane.
  static constexpr int kLanesPerKind = 1000;
  struct LaneSet {
    std::string name;               // the first lane's track name; lane i > 0 adds " #<i+1>"
    std::vector<Nanos> busy_until;  // per lane
  };
  std::map<std::pair<int, int>, LaneSet> lanes;  // by (pid, kind)

  void nameProcess(int pid, const std::string& name) {
    traceEvent("{\"ph\":\"M\",\"pid\":" + std::to_string(pid) + ",\"name\":\"process_name\",\"args\":{\"name\":" +
               nlohmann::json(name).dump() + "}}");
    traceEvent("{\"ph\":\"M\",\"pid\":" + std::to_string(pid) +
               ",\"name\":\"process_sort_index\",\"args\":{\"sort_index\":" + std::to_string(pid) + "}}");
  }
  void nameThread(int pid, int tid, const std::string& name) {
    const std::string ids = "\"pid\":" + std::to_string(pid) + ",\"tid\":" + std::to_string(tid);
    traceEvent("{\"ph\":\"M\"," + ids + ",\"name\":\"thread_name\",\"args\":{\"name\":" + nlohmann::json(name).dump() +
               "}}");
    traceEvent("{\"ph\":\"M\"," + ids + ",\"name\":\"thread_sort_index\",\"args\":{\"sort_index\":" +
               std::to_string(tid) + "}}");
  }
  // Declares a kind of track of `pid` and names its first lane.
  void declareTrack(int pid, int kind, const std::string& name) {
    LaneSet& set = lanes[{pid, kind}];
    set.name = name;
    set.busy_until.assign(1, std::numeric_limits<Nanos>::min());
    nameThread(pid, kind * kLanesPerKind, name);
  }
  // The thread id of the lane of (pid, kind) that takes [start, end); names a new lane.
  int lane(int pid, int kind, Nanos start, Nanos end) {
    LaneSet& set = lanes[{pid, kind}];
    std::size_t i = 0;
    while (i < set.busy_until.size() && set.busy_until[i] > start) ++i;
    if (i == set.busy_until.size()) {
      if (i == static_cast<std::size_t>(kLanesPerKind)) throw std::logic_error("timeline: too many concurrent spans");
      set.busy_until.push_back(end);
      nameThread(pid, kind * kLanesPerKind + static_cast<int>(i), set.name + " #" + std::to_string(i + 1));
    } else {
      set.busy_until[i] = end;
    }
    return kind * kLanesPerKind + static_cast<int>(i);
  }

  // Spans a backend adds (addTimelineSpan), drawn when the run ends: their tracks sorted by name,
  // each track's spans by time, on a process of their own after the GPUs.
  struct ExtraSpan {
    std::string name;
    Nanos start = 0, end = 0;
    std::string args;
  };
  std::map<std::string, std::vector<ExtraSpan>, NaturalLess> extra_spans;  // by track
  void writeExtraSpans() {
    if (extra_spans.empty()) return;
    const int pid = scenario.cluster.numGpus();
    nameProcess(pid, "runtime transfers and layers");
    int kind = 0;
    for (auto& [track, spans] : extra_spans) {
      std::stable_sort(spans.begin(), spans.end(), [](const ExtraSpan& a, const ExtraSpan& b) {
        return a.start != b.start ? a.start < b.start : a.end < b.end;
      });
      declareTrack(pid, kind, track);
      for (const ExtraSpan& sp : spans) span(pid, lane(pid, kind, sp.start, sp.end), sp.name, track.c_str(), sp.start, sp.end, sp.args);
      ++kind;
    }
    extra_spans.clear();
  }

  void flushEpisode(ModelStats& m) {
    if (m.episode_start >= 0) m.load_time += m.episode_end - m.episode_start;
    m.episode_start = m.episode_end = -1;
  }
};

RunRecorder::RunRecorder(const Scenario& scenario, std::string backend_name)
    : impl_(std::make_unique<Impl>(scenario, std::move(backend_name))) {
  auto& im = *impl_;
  im.models.resize(scenario.engine.models.size());
  for (std::size_t m = 0; m < im.models.size(); ++m) im.models[m].slo = scenario.engine.models[m].slo;
  im.gpu_busy.assign(static_cast<std::size_t>(scenario.cluster.numGpus()), 0);
  im.link_bytes.assign(static_cast<std::size_t>(scenario.cluster.numGpus()), 0);
  if (scenario.outputs.dir.empty()) return;
  im.dir = scenario.outputs.dir;
  im.staged = std::make_unique<StagedDir>(im.dir);
  if (scenario.outputs.requests_csv) {
    openChecked(im.requests_csv, im.staged->path() / "requests.csv");
    im.requests_csv << "id,model,arrival_s,start_s,first_token_s,finish_s,latency_s,prompt_tokens,output_tokens,"
                       "waited_for_load,ok,error,tpot_s,preemptions\n";
  }
  if (scenario.outputs.timeline) {
    openChecked(im.timeline, im.staged->path() / "timeline.json");
    im.timeline << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[";
    for (int g = 0; g < scenario.cluster.numGpus(); ++g) {
      im.nameProcess(g, "GPU " + std::to_string(g));
      im.declareTrack(g, kComputeTrack, "compute");
      im.declareTrack(g, kLoadTrack, "loads");
      im.declareTrack(g, kEvictionTrack, "evictions");
    }
  }
}

RunRecorder::~RunRecorder() = default;

void RunRecorder::onRequestDone(const RequestRecord& r) {
  auto& im = *impl_;
  auto& m = im.models[static_cast<std::size_t>(r.request.model)];
  const std::optional<Nanos> tpot = timePerOutputToken(r);
  for (Impl::ModelStats* s : {&m, &im.all}) {
    if (m.slo > 0) ++s->slo_requests;
    if (!r.ok) {
      ++s->failed;
      if (r.rejected) ++s->rejected;
      if (r.refused) ++s->refused;
      continue;
    }
    Nanos latency = r.finish - r.request.arrival;
    s->latency.add(latency);
    s->ttft.add(r.first_token - r.request.arrival);
    if (tpot) s->tpot.add(*tpot);
    ++s->served;
    if (r.waited_for_load) ++s->waited;
    if (m.slo == 0 || latency <= m.slo) ++s->met_slo;
    if (m.slo > 0 && latency <= m.slo) ++s->slo_met;
    s->prompt_tokens += r.request.prompt_tokens;
    s->output_tokens += r.request.output_tokens;
  }
  if (im.requests_csv.is_open()) {
    im.requests_csv << r.request.id << ',' << csvField(im.scenario.engine.models[static_cast<std::size_t>(r.request.model)].name)
                    << ',' << secondsText(r.request.arrival) << ',' << secondsText(r.start) << ','
                    << secondsText(r.first_token) << ',' << secondsText(r.finish) << ','
                    << secondsText(r.finish - r.request.arrival) << ',' << r.request.prompt_tokens << ','
                    << r.request.output_tokens << ',' << (r.waited_for_load ? 1 : 0) << ',' << (r.ok ? 1 : 0) << ','
                    << csvField(r.error) << ',' << (tpot ? secondsText(*tpot) : std::string()) << ','
                    << r.preemptions << '\n';
  }
}

void RunRecorder::onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) {
  auto& im = *impl_;
  auto& m = im.models[static_cast<std::size_t>(cmd.model)];
  if (m.episode_start != start) {
    im.flushEpisode(m);
    m.episode_start = start;
    ++m.loads;
    ++im.all.loads;
  }
  m.episode_end = std::max(m.episode_end, end);
  if (ok) {
    m.bytes_loaded += cmd.bytes;
    im.all.bytes_loaded += cmd.bytes;
  }
  for (const auto& part : cmd.route) {
    if (!part.from_device) im.link_bytes[static_cast<std::size_t>(part.via)] += part.bytes;
    if (part.via != cmd.gpu) im.nvlink_bytes += part.bytes;
  }
  const std::string& name = im.scenario.engine.models[static_cast<std::size_t>(cmd.model)].name;
  if (im.timeline.is_open()) {
    char args[160];
    std::snprintf(args, sizeof args, "{\"shard\":%d,\"bytes\":%" PRId64 ",\"ok\":%s,\"GB_per_s\":%.3f}", cmd.shard,
                  cmd.bytes, ok ? "true" : "false",
                  end > start ? static_cast<double>(cmd.bytes) / static_cast<double>(end - start) : 0.0);
    im.span(cmd.gpu, im.lane(cmd.gpu, kLoadTrack, start, end), "load " + name, "load", start, end, args);
  }
}

void RunRecorder::onEvict(const EvictCommand& cmd, Nanos start, Nanos end) {
  auto& im = *impl_;
  auto& m = im.models[static_cast<std::size_t>(cmd.model)];
  if (cmd.shard == 0) {
    ++m.evictions;
    ++im.all.evictions;
  }
  const std::string& name = im.scenario.engine.models[static_cast<std::size_t>(cmd.model)].name;
  if (im.timeline.is_open())
    im.span(cmd.gpu, im.lane(cmd.gpu, kEvictionTrack, start, end), "evict " + name, "evict", start, end,
            "{\"shard\":" + std::to_string(cmd.shard) + ",\"bytes\":" + std::to_string(cmd.bytes) + "}");
}

void RunRecorder::onBatch(const ExecuteCommand& cmd, const BatchResult& result) {
  auto& im = *impl_;
  Nanos end = result.start;
  for (Nanos f : result.finish) end = std::max(end, f);
  const std::string& name = im.scenario.engine.models[static_cast<std::size_t>(cmd.model)].name;
  std::string args;
  if (im.timeline.is_open())
    args = "{\"batch\":" + std::to_string(cmd.batch) + ",\"size\":" + std::to_string(cmd.requests.size()) +
           ",\"ok\":" + (result.ok ? "true" : "false") + "}";
  for (GpuId g : cmd.gpus) {
    im.gpu_busy[static_cast<std::size_t>(g)] += end - result.start;
    if (im.timeline.is_open()) im.span(g, im.lane(g, kComputeTrack, result.start, end), name, "batch", result.start, end, args);
  }
}

void RunRecorder::onStep(const StepCommand& cmd, const StepResult& result) {
  auto& im = *impl_;
  const int sequences = static_cast<int>(cmd.prefill.size() + cmd.decode.size());
  for (GpuId g : cmd.gpus) {
    const auto gi = static_cast<std::size_t>(g);
    im.gpu_busy[gi] += result.end - result.start;
    if (!im.timeline.is_open()) continue;
    if (im.open_sessions.size() <= gi) im.open_sessions.resize(gi + 1);
    Impl::OpenSession& open = im.open_sessions[gi];
    if (open.id != cmd.batch) {
      im.flushSession(g);
      open = Impl::OpenSession{};
      open.id = cmd.batch;
      open.model = cmd.model;
      open.start = result.start;
    }
    open.end = result.end;
    ++open.steps;
    open.step_time += result.end - result.start;
    if (!cmd.prefill.empty()) {
      ++open.prefill_steps;
      open.prefill_time += result.end - result.start;
    }
    open.max_sequences = std::max(open.max_sequences, sequences);
    open.ok = open.ok && result.ok;
  }
}

void RunRecorder::onTokenGaps(ModelId m, Nanos gap, std::int64_t count) {
  auto& im = *impl_;
  im.models[static_cast<std::size_t>(m)].itl.add(gap, count);
  im.all.itl.add(gap, count);
}

void RunRecorder::addTimelineSpan(const std::string& track, const std::string& name, Nanos start, Nanos end,
                                  const nlohmann::json& args) {
  if (!impl_->timeline.is_open()) return;
  impl_->extra_spans[track].push_back({name, start, end, args.dump()});
}

nlohmann::json RunRecorder::finish(Nanos end, const nlohmann::json& extra) {
  auto& im = *impl_;
  for (std::size_t g = 0; g < im.open_sessions.size(); ++g) im.flushSession(static_cast<GpuId>(g));
  const double seconds = std::max(toSeconds(end), 1e-9);
  auto stats = [&](Impl::ModelStats& s, Nanos slo) {
    im.flushEpisode(s);
    auto ms = [](double ns) { return round6(ns / 1e6); };
    nlohmann::json j;
    j["requests"] = s.served + s.failed;
    j["served"] = s.served;
    j["failed"] = s.failed;
    j["rejected"] = s.rejected;
    j["refused"] = s.refused;
    j["waited_for_load"] = s.waited;
    j["latency_ms"] = {{"mean", ms(s.latency.mean())},
                       {"p50", ms(static_cast<double>(s.latency.quantile(0.5)))},
                       {"p90", ms(static_cast<double>(s.latency.quantile(0.9)))},
                       {"p99", ms(static_cast<double>(s.latency.quantile(0.99)))},
                       {"max", ms(static_cast<double>(s.latency.max()))}};
    j["ttft_ms"] = {{"mean", ms(s.ttft.mean())},
                    {"p50", ms(static_cast<double>(s.ttft.quantile(0.5)))},
                    {"p90", ms(static_cast<double>(s.ttft.quantile(0.9)))},
                    {"p99", ms(static_cast<double>(s.ttft.quantile(0.99)))}};
    // Per output token: 0 throughout where no sample came (like an empty histogram above).
    auto perToken = [&](const LatencyHistogram& h) {
      return nlohmann::json{{"mean", ms(h.mean())},
                            {"p50", ms(static_cast<double>(h.quantile(0.5)))},
                            {"p90", ms(static_cast<double>(h.quantile(0.9)))},
                            {"p99", ms(static_cast<double>(h.quantile(0.99)))}};
    };
    j["tpot_ms"] = perToken(s.tpot);
    j["itl_ms"] = perToken(s.itl);
    j["slo_ms"] = slo > 0 ? nlohmann::json(toMillis(slo)) : nlohmann::json(nullptr);
    // null when no request had an objective (an SLO of 0 is none, not one always met).
    j["slo_attainment"] = s.slo_requests > 0
                              ? nlohmann::json(round6(static_cast<double>(s.slo_met) / static_cast<double>(s.slo_requests)))
                              : nlohmann::json(nullptr);
    j["goodput_rps"] = round6(static_cast<double>(s.met_slo) / seconds);
    j["throughput_rps"] = round6(static_cast<double>(s.served) / seconds);
    j["output_tokens_per_s"] = round6(static_cast<double>(s.output_tokens) / seconds);
    j["swaps"] = s.loads;
    j["evictions"] = s.evictions;
    j["bytes_loaded"] = s.bytes_loaded;
    j["load_time_s"] = round6(toSeconds(s.load_time));
    return j;
  };
  nlohmann::json summary;
  summary["scenario"] = im.scenario.name;
  summary["backend"] = im.backend;
  // Stopped by SIGINT or SIGTERM: what ran is complete and recorded, the rest never arrived.
  if (stopRequested()) summary["interrupted"] = true;
  summary["duration_s"] = round6(toSeconds(end));
  nlohmann::json per_model = nlohmann::json::array();
  // Overall SLO attainment counts each request against its own model's objective.
  for (std::size_t m = 0; m < im.models.size(); ++m) {
    nlohmann::json j = stats(im.models[m], im.models[m].slo);
    j["name"] = im.scenario.engine.models[m].name;
    per_model.push_back(j);
  }
  for (auto& m : im.models) im.all.load_time += m.load_time;
  nlohmann::json overall = stats(im.all, 0);
  overall.erase("slo_ms");
  summary["overall"] = overall;
  summary["models"] = per_model;
  nlohmann::json gpus = nlohmann::json::array();
  for (std::size_t g = 0; g < im.gpu_busy.size(); ++g) {
    double link_bw = im.scenario.cluster.gpus[g].host_link_bandwidth;
    gpus.push_back({{"gpu", g},
                    {"busy_fraction", round6(toSeconds(im.gpu_busy[g]) / seconds)},
                    {"host_link_bytes", im.link_bytes[g]},
                    {"host_link_utilisation", round6(static_cast<double>(im.link_bytes[g]) / (link_bw * seconds))}});
  }
  summary["gpus"] = gpus;
  summary["nvlink_bytes"] = im.nvlink_bytes;
  for (auto it = extra.begin(); it != extra.end(); ++it) summary[it.key()] = it.value();
  summary["config"] = im.scenario.effective;

  if (im.staged) {
    // Every file is checked, then the folder renamed into place: whole or absent.
    if (im.requests_csv.is_open()) closeChecked(im.requests_csv, im.dir / "requests.csv");
    if (im.timeline.is_open()) {
      im.writeExtraSpans();
      im.timeline << "\n]}\n";
      closeChecked(im.timeline, im.dir / "timeline.json");
    }
    if (im.scenario.outputs.summary) {
      std::ofstream out;
      openChecked(out, im.staged->path() / "summary.json");
      out << summary.dump(2) << "\n";
      closeChecked(out, im.dir / "summary.json");
    }
    im.staged->commit();
  }
  return summary;
}

void RunRecorder::printTable(const nlohmann::json& summary, std::ostream& out) const {
  auto row = [&](const std::string& name, const nlohmann::json& j) {
    char slo[32];
    if (j["slo_attainment"].is_number()) {
      std::snprintf(slo, sizeof slo, "%8.1f%%", 100.0 * j["slo_attainment"].get<double>());
    } else {
      std::snprintf(slo, sizeof slo, "%9s", "-");  // no objective
    }
    char buf[256];
    std::snprintf(buf, sizeof buf, "%-22s %9lld %10.1f %10.1f %10.1f %10.1f %8.2f %s %7lld %9.1f\n", name.c_str(),
                  static_cast<long long>(j["requests"].get<std::int64_t>()), j["latency_ms"]["mean"].get<double>(),
                  j["latency_ms"]["p50"].get<double>(), j["latency_ms"]["p99"].get<double>(),
                  j["ttft_ms"]["mean"].get<double>(), j["tpot_ms"]["mean"].get<double>(), slo, static_cast<long long>(j["swaps"].get<std::int64_t>()),
                  static_cast<double>(j["bytes_loaded"].get<std::int64_t>()) / 1e9);
    out << buf;
  };
  out << "scenario " << summary["scenario"].get<std::string>() << " (" << summary["backend"].get<std::string>()
      << "), ran " << summary["duration_s"].get<double>() << " s\n";
  char head[256];
  std::snprintf(head, sizeof head, "%-22s %9s %10s %10s %10s %10s %8s %9s %7s %9s\n", "model", "requests", "mean ms",
                "p50 ms", "p99 ms", "ttft ms", "tpot ms", "SLO met", "swaps", "GB moved");
  out << head;
  for (const auto& m : summary["models"]) row(m["name"].get<std::string>(), m);
  row("all", summary["overall"]);
  for (const auto& g : summary["gpus"])
    out << "GPU " << g["gpu"].get<int>() << ": busy " << std::fixed << std::setprecision(1)
        << 100.0 * g["busy_fraction"].get<double>() << "%, host link "
        << 100.0 * g["host_link_utilisation"].get<double>() << "%\n";
  out.unsetf(std::ios::fixed);
  if (!impl_->dir.empty()) out << "outputs in " << impl_->dir.string() << "/\n";
}

}  // namespace computron
