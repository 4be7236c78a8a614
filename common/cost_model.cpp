#include "common/cost_model.h"

#include <algorithm>
#include <cmath>

namespace computron {

Nanos RooflineCostModel::allReduceTime(double bytes, int tp, bool across_nodes) const {
  if (tp <= 1) return 0;
  if (across_nodes) {
    // The ring's slowest hops cross the network: each GPU sends over its share of the NIC.
    const double seconds = 2.0 * (tp - 1) / tp * bytes / cluster_.nicShare();
    return static_cast<Nanos>(std::ceil(seconds * 1e9)) + cluster_.network.nic_latency;
  }
  double bw = cluster_.hasNvlink() ? cluster_.nvlink_bandwidth : cluster_.gpus.front().host_link_bandwidth / 2;
  double seconds = 2.0 * (tp - 1) / tp * bytes / bw;
  return static_cast<Nanos>(std::ceil(seconds * 1e9)) + cluster_.nvlink_latency;
}

Nanos RooflineCostModel::stageSendTime(double bytes, bool across_nodes) const {
  if (across_nodes)
    return static_cast<Nanos>(std::ceil(bytes / cluster_.nicShare() * 1e9)) + cluster_.network.nic_latency;
  double bw = cluster_.hasNvlink() ? cluster_.nvlink_bandwidth : cluster_.gpus.front().host_link_bandwidth;
  return static_cast<Nanos>(std::ceil(bytes / bw * 1e9)) + cluster_.nvlink_latency;
}

Nanos RooflineCostModel::stageTime(const ModelDeployment& model, int stage, double tokens, double attended,
                           double kv_read_tokens) const {
  const ModelSpec& spec = model.spec;
  ShardLayout layout = spec.shard(model.tp, model.pp, 0, stage);
  const GpuSpec& gpu = cluster_.gpus[static_cast<std::size_t>(model.gpus[static_cast<std::size_t>(stage * model.tp)])];
  const double dtype = dtypeBytes(spec.dtype);
  // Embedding lookups are gathers, not matrix products.
  double matmul_params = static_cast<double>(layout.bytes - layout.prefix_bytes) / dtype;
  double hidden_share = static_cast<double>(spec.hidden) / model.tp;
  double flops = 2.0 * matmul_params * tokens + 4.0 * layout.num_layers * hidden_share * attended;
  double kv_per_token = static_cast<double>(spec.kvBytesPerToken()) * layout.num_layers / spec.num_layers / model.tp;
  double bytes = static_cast<double>(layout.bytes) + kv_per_token * (kv_read_tokens + tokens);
  double compute_s = flops / (gpu.peak_flops * cluster_.compute_efficiency);
  double memory_s = bytes / (gpu.hbm_bandwidth * cluster_.memory_efficiency);
  Nanos t = static_cast<Nanos>(std::ceil(std::max(compute_s, memory_s) * 1e9));
  t += cluster_.kernel_overhead * layout.num_layers;
  // Two all-reduces per layer (after attention and after the MLP) of the tokens' activations.
  bool across_nodes = false;
  for (int r = 1; r < model.tp; ++r)
    across_nodes = across_nodes || !cluster_.sameNode(model.gpus[static_cast<std::size_t>(stage * model.tp)],
                                                      model.gpus[static_cast<std::size_t>(stage * model.tp + r)]);
  t += 2 * layout.num_layers * allReduceTime(tokens * spec.hidden * dtype, model.tp, across_nodes);
  return t;
}

Nanos RooflineCostModel::passTime(const ModelDeployment& model, double tokens, double attended,
                                  double kv_read) const {
  const double dtype = dtypeBytes(model.spec.dtype);
  Nanos t = 0;
  for (int s = 0; s < model.pp; ++s) {
    t += stageTime(model, s, tokens, attended, kv_read);
    if (s + 1 < model.pp) {
      const bool across = !cluster_.sameNode(model.gpus[static_cast<std::size_t>(s * model.tp)],
                                             model.gpus[static_cast<std::size_t>((s + 1) * model.tp)]);
      t += stageSendTime(tokens * model.spec.hidden * dtype, across);
    }
  }
  return t;
}

StepTime RooflineCostModel::prefillStep(const ModelDeployment& model, const std::vector<std::int32_t>& contexts,
                                        bool /*first_after_load*/, Nanos /*idle*/, Nanos /*busy*/) const {
  if (model.fixed_batch_time > 0) return {model.fixed_batch_time, false};
  double tokens = 0, causal_pairs = 0;
  for (std::int32_t c : contexts) {
    tokens += c;
    causal_pairs += 0.5 * static_cast<double>(c) * (c + 1);
  }
  return {passTime(model, tokens, causal_pairs, 0), false};
}

StepTime RooflineCostModel::decodeStep(const ModelDeployment& model, int batch, double total_context) const {
  if (model.fixed_batch_time > 0) return {model.fixed_batch_time, false};
  // As a request-level batch's decode step s: the contexts hold each prompt and s tokens.
  return {passTime(model, batch, total_context, total_context), false};
}

BatchTimes RooflineCostModel::batchTimes(const ModelDeployment& model, const std::vector<Request>& requests,
                                         bool /*first_after_load*/, Nanos /*idle*/, Nanos /*busy*/) const {
  BatchTimes times;
  if (model.fixed_batch_time > 0) {
    times.first_token = model.fixed_batch_time;
    times.finish.assign(requests.size(), model.fixed_batch_time);
    times.total = model.fixed_batch_time;
    return times;
  }
  double prompt_tokens = 0, causal_pairs = 0;
  std::int32_t longest_output = 1;
  for (const auto& r : requests) {
    prompt_tokens += r.prompt_tokens;
    causal_pairs += 0.5 * static_cast<double>(r.prompt_tokens) * (r.prompt_tokens + 1);
    longest_output = std::max(longest_output, r.output_tokens);
  }
  auto pass = [&](double tokens, double attended, double kv_read) { return passTime(model, tokens, attended, kv_read); };
  // Prefill: every prompt token once, each attending causally over its own prompt.
  Nanos t = pass(prompt_tokens, causal_pairs, 0);
  times.first_token = t;
  // Decode: one token per sequence per step; request-level batching keeps every slot stepping.
  double batch = static_cast<double>(requests.size());
  double attended = prompt_tokens;
  std::vector<Nanos> step_end(static_cast<std::size_t>(longest_output), t);
  for (std::int32_t step = 1; step < longest_output; ++step) {
    attended += batch;
    t += pass(batch, attended, attended);
    step_end[static_cast<std::size_t>(step)] = t;
  }
  times.finish.reserve(requests.size());
  for (const auto& r : requests) times.finish.push_back(step_end[static_cast<std::size_t>(std::max(1, r.output_tokens) - 1)]);
  times.total = t;
  return times;
}

namespace {

Nanos nanosFromMillis(double ms) { return static_cast<Nanos>(std::llround(ms * 1e6)); }

}  // namespace

std::unique_ptr<CostModel> makeCostModel(const ClusterSpec& cluster) {
  if (cluster.profile) return std::make_unique<ProfiledCostModel>(cluster, cluster.profile);
  return std::make_unique<RooflineCostModel>(cluster);
}

const ModelProfile* ProfiledCostModel::entryFor(const ModelDeployment& model) const {
  if (model.fixed_batch_time > 0) return nullptr;
  return profile_->find(model.spec.name, model.tp, model.pp);
}

std::string ProfiledCostModel::sourceFor(const ModelDeployment& model) const {
  if (model.fixed_batch_time > 0) return "fixed_batch_ms";
  return entryFor(model) != nullptr ? "profile" : "roofline";
}

std::string ProfiledCostModel::prefillShapeFor(const ModelDeployment& model) const {
  const ModelProfile* entry = entryFor(model);
  if (entry == nullptr) return "";
  return entry->prefill_shape.measured ? "measured" : "roofline";
}

Nanos ProfiledCostModel::decodeGraphCapture(const ModelDeployment& model, int batch) const {
  const ModelProfile* entry = entryFor(model);
  return entry == nullptr ? 0 : nanosFromMillis(entry->decodeGraphMs(batch));
}

bool ProfiledCostModel::tracksDecodeGraphs(const ModelDeployment& model) const {
  const ModelProfile* entry = entryFor(model);
  if (entry == nullptr) return false;
  for (double ms : entry->decode_graph_ms)
    if (ms > 0) return true;
  return false;
}

Nanos ProfiledCostModel::powerRecover(const ModelDeployment& model) const {
  const ModelProfile* entry = entryFor(model);
  return entry != nullptr && entry->power.hot_factor > 1 ? nanosFromMillis(entry->power.recover_ms) : 0;
}

ProfileGrid::Lookup ProfiledCostModel::prefillLookup(const ModelDeployment& model, const ModelProfile& entry,
                                                     const std::vector<double>& prompts) const {
  const double batch = static_cast<double>(prompts.size());
  double tokens = 0, pairs = 0;
  for (double p : prompts) {
    tokens += p;
    pairs += 0.5 * p * (p + 1);
  }
  const double mean = tokens / batch;
  const double edge = std::min(mean, entry.prefill.tokens.back());
  ProfileGrid::Lookup at = entry.prefill.at(batch, edge);
  at.outside = entry.prefill.at(batch, mean).outside;
  const double uniform_pairs = batch * 0.5 * edge * (edge + 1);
  const PrefillShape& shape = entry.prefill_shape;
  const double uniform = shape.measured ? shape.ms(batch * edge, uniform_pairs)
                                        : static_cast<double>(roofline_.prefillPass(model, batch * edge, uniform_pairs));
  const double actual = shape.measured ? shape.ms(tokens, pairs) : static_cast<double>(roofline_.prefillPass(model, tokens, pairs));
  if (uniform > 0 && actual > 0 && (edge != mean || actual != uniform)) at.ms *= actual / uniform;
  return at;
}

BatchTimes ProfiledCostModel::batchTimes(const ModelDeployment& model, const std::vector<Request>& requests,
                                         bool first_after_load, Nanos idle, Nanos busy) const {
  const ModelProfile* entry = entryFor(model);
  if (entry == nullptr || requests.empty()) return roofline_.batchTimes(model, requests, first_after_load, idle, busy);
  BatchTimes times;
  const double batch = static_cast<double>(requests.size());
  double prompt_tokens = 0;
  std::int32_t longest_output = 1;
  std::vector<double> prompts;
  prompts.reserve(requests.size());
  for (const auto& r : requests) {
    prompts.push_back(std::max(1, r.prompt_tokens));
    prompt_tokens += prompts.back();
    longest_output = std::max(longest_output, r.output_tokens);
  }
  const ProfileGrid::Lookup prefill = prefillLookup(model, *entry, prompts);
  times.outside_profile = prefill.outside;
  Nanos t = nanosFromMillis(prefill.ms + entry->hotPrefillExtraMs(prefill.ms, static_cast<double>(busy) / 1e6));
  if (first_after_load) t += nanosFromMillis(entry->first_batch_extra_ms);
  t += nanosFromMillis(entry->idleExtraMs(static_cast<double>(idle) / 1e6));
  times.first_token = t;
  // Step s makes token s + 1 of each sequence still generating (output > s), over a context of
  // its prompt and s tokens: the runtime's executor drops a finished sequence from its passes, so
  // a step is timed at the batch size and mean prompt of the sequences left.
  std::vector<std::pair<std::int32_t, std::int32_t>> by_output;  // (output, prompt), shortest first
  by_output.reserve(requests.size());
  for (const auto& r : requests) by_output.emplace_back(r.output_tokens, std::max(1, r.prompt_tokens));
  std::sort(by_output.begin(), by_output.end());
  std::size_t gone = 0;
  double left = batch, left_prompt = prompt_tokens;
  std::vector<Nanos> step_end(static_cast<std::size_t>(longest_output), t);
  for (std::int32_t step = 1; step < longest_output; ++step) {
    while (gone < by_output.size() && by_output[gone].first <= step) {
      left -= 1;
      left_prompt -= by_output[gone].second;
      ++gone;
    }
    const ProfileGrid::Lookup decode = entry->decode.at(left, left_prompt / left + step);
    times.outside_profile = times.outside_profile || decode.outside;
    t += nanosFromMillis(decode.ms);
    step_end[static_cast<std::size_t>(step)] = t;
  }
  times.finish.reserve(requests.size());
  for (const auto& r : requests) times.finish.push_back(step_end[static_cast<std::size_t>(std::max(1, r.output_tokens) - 1)]);
  times.total = t + nanosFromMillis(entry->batch_tail_ms);
  return times;
}

StepTime ProfiledCostModel::prefillStep(const ModelDeployment& model, const std::vector<std::int32_t>& contexts,
                                        bool first_after_load, Nanos idle, Nanos busy) const {
  const ModelProfile* entry = entryFor(model);
  if (entry == nullptr || contexts.empty()) return roofline_.prefillStep(model, contexts, first_after_load, idle, busy);
  std::vector<double> prompts;
  prompts.reserve(contexts.size());
  for (std::int32_t c : contexts) prompts.push_back(std::max(1, c));
  const ProfileGrid::Lookup prefill = prefillLookup(model, *entry, prompts);
  Nanos t = nanosFromMillis(prefill.ms + entry->hotPrefillExtraMs(prefill.ms, static_cast<double>(busy) / 1e6)) +
            nanosFromMillis(entry->batch_tail_ms);
  if (first_after_load) t += nanosFromMillis(entry->first_batch_extra_ms);
  t += nanosFromMillis(entry->idleExtraMs(static_cast<double>(idle) / 1e6));
  return {t, prefill.outside};
}

StepTime ProfiledCostModel::decodeStep(const ModelDeployment& model, int batch, double total_context) const {
  const ModelProfile* entry = entryFor(model);
  if (entry == nullptr || batch <= 0) return roofline_.decodeStep(model, batch, total_context);
  const ProfileGrid::Lookup decode = entry->decode.at(batch, total_context / batch);
  return {nanosFromMillis(decode.ms) + nanosFromMillis(entry->batch_tail_ms), decode.outside};
}

}  // namespace computron
