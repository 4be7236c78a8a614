#include "common/profile.h"

#include <algorithm>
#include <cmath>

#include "common/model_spec.h"

namespace computron {
namespace {

struct Interp {
  double value = 0;
  bool outside = false;
};

// Linear along one axis; below the first point the first value, above the last the last segment's
// slope continued (a negative slope taken as flat). See ProfileGrid.
Interp along(const std::vector<double>& axis, const std::vector<double>& values, double x) {
  const std::size_t n = axis.size();
  if (n == 1) return {values[0], x != axis[0]};
  if (x <= axis[0]) return {values[0], x < axis[0]};
  if (x >= axis[n - 1]) {
    const double slope = std::max(0.0, (values[n - 1] - values[n - 2]) / (axis[n - 1] - axis[n - 2]));
    return {values[n - 1] + slope * (x - axis[n - 1]), x > axis[n - 1]};
  }
  const std::size_t hi = static_cast<std::size_t>(std::upper_bound(axis.begin(), axis.end(), x) - axis.begin());
  const std::size_t lo = hi - 1;
  if (x == axis[lo]) return {values[lo], false};
  const double w = (x - axis[lo]) / (axis[hi] - axis[lo]);
  return {values[lo] + w * (values[hi] - values[lo]), false};
}

std::vector<double> readAxis(const JsonReader& node, double max_value) {
  if (!node.isArray()) node.fail("expected an array of increasing integers");
  if (node.size() == 0) node.fail("needs at least one point");
  if (node.size() > 256) node.fail("at most 256 points");
  std::vector<double> axis;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const JsonReader v = node.at(i);
    const double x = static_cast<double>(v.asIntIn(1, static_cast<std::int64_t>(max_value)));
    if (!axis.empty() && x <= axis.back())
      v.fail("the grid must be strictly increasing (" + std::to_string(static_cast<std::int64_t>(x)) + " after " +
             std::to_string(static_cast<std::int64_t>(axis.back())) + ")");
    axis.push_back(x);
  }
  return axis;
}

ProfileGrid readGrid(const JsonReader& node, const char* tokens_key) {
  node.expectObject({"batch", tokens_key, "ms"});
  ProfileGrid g;
  g.batch = readAxis(node.at("batch"), static_cast<double>(kMaxRequestTokens));
  g.tokens = readAxis(node.at(tokens_key), static_cast<double>(kMaxRequestTokens));
  const JsonReader rows = node.at("ms");
  if (!rows.isArray()) rows.fail("expected an array with one row per batch size");
  if (rows.size() != g.batch.size())
    rows.fail("has " + std::to_string(rows.size()) + " rows but the grid has " + std::to_string(g.batch.size()) +
              " batch sizes");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const JsonReader row = rows.at(i);
    if (!row.isArray()) row.fail("expected an array with one value per " + std::string(tokens_key) + " point");
    if (row.size() != g.tokens.size())
      row.fail("has " + std::to_string(row.size()) + " values but the grid has " + std::to_string(g.tokens.size()) +
               " " + tokens_key + " points");
    std::vector<double> values;
    for (std::size_t j = 0; j < row.size(); ++j) {
      const JsonReader v = row.at(j);
      const double ms = v.asDouble();
      if (!(ms > 0)) v.fail("a time must be greater than 0 ms");
      if (ms > 1e7) v.fail("a time must be at most 1e7 ms");
      values.push_back(ms);
    }
    g.ms.push_back(std::move(values));
  }
  return g;
}

double readMillis(const JsonReader& node, const std::string& key) {
  const JsonReader v = node.at(key);
  const double ms = v.asDouble();
  if (!(ms >= 0)) v.fail("must not be negative");
  if (ms > 1e7) v.fail("must be at most 1e7 ms");
  return ms;
}

}  // namespace

ProfileGrid::Lookup ProfileGrid::at(double batch_size, double token_count) const {
  std::vector<double> column;
  column.reserve(batch.size());
  bool outside = false;
  for (const auto& row : ms) {
    const Interp r = along(tokens, row, token_count);
    column.push_back(r.value);
    outside = outside || r.outside;
  }
  const Interp c = along(batch, column, batch_size);
  return {c.value, outside || c.outside};
}

PrefillShape fitPrefillShape(const ProfileGrid& prefill) {
  PrefillShape shape;
  if (prefill.batch.empty() || prefill.ms.empty()) return shape;
  const double batch = prefill.batch.back();
  const std::vector<double>& row = prefill.ms.back();
  // Least squares of y = a + b x over the row's long prompts: x = (P+1)/2, y = ms per token.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t j = 0; j < prefill.tokens.size() && j < row.size(); ++j) {
    const double p = prefill.tokens[j];
    if (p < kPrefillShapeMinPrompt) continue;
    const double x = 0.5 * (p + 1), y = row[j] / (batch * p);
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double det = n * sxx - sx * sx;
  if (n < 2 || !(det > 0)) return shape;
  const double b = (n * sxy - sx * sy) / det;
  const double a = (sy - b * sx) / n;
  // A falling time per token says the row is not bound by compute at these prompts (fixed costs
  // spread over more tokens): it cannot tell attention's cost.
  if (!(b >= 0) || !(a > 0) || !std::isfinite(a) || !std::isfinite(b)) return shape;
  shape.measured = true;
  shape.per_token_ms = a;
  shape.per_pair_ms = b;
  return shape;
}

double ModelProfile::decodeGraphMs(int batch) const {
  if (decode_graph_ms.empty()) return 0;
  const double b = static_cast<double>(batch);
  if (b <= decode_graph_batch.front()) return decode_graph_ms.front();
  for (std::size_t k = 1; k < decode_graph_batch.size(); ++k) {
    if (b <= decode_graph_batch[k]) {
      const double f = (b - decode_graph_batch[k - 1]) / (decode_graph_batch[k] - decode_graph_batch[k - 1]);
      return decode_graph_ms[k - 1] + f * (decode_graph_ms[k] - decode_graph_ms[k - 1]);
    }
  }
  return decode_graph_ms.back();
}

double ModelProfile::idleExtraMs(double gap_ms) const {
  if (idle_gap_ms.empty() || gap_ms <= 0) return 0;
  double x0 = 0, y0 = 0;
  for (std::size_t i = 0; i < idle_gap_ms.size(); ++i) {
    if (gap_ms <= idle_gap_ms[i]) return y0 + (idle_extra_ms[i] - y0) * (gap_ms - x0) / (idle_gap_ms[i] - x0);
    x0 = idle_gap_ms[i];
    y0 = idle_extra_ms[i];
  }
  return y0;
}

double ModelProfile::hotPrefillExtraMs(double grid_ms, double busy_ms) const {
  if (power.hot_factor <= 1 || grid_ms <= 0) return 0;
  const double cool_left = std::max(0.0, power.heat_ms - std::max(0.0, busy_ms));
  return std::max(0.0, std::min(grid_ms, power.heat_ms) - cool_left) * (power.hot_factor - 1);
}

nlohmann::json powerFromProbe(const PowerProbe& probe) {
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  const double cool = probe.after_gap.empty() ? 0 : probe.after_gap.back().second;
  std::vector<double> late;
  double first_half = 0;
  int first_runs = 0;
  for (const auto& [since, ms] : probe.ramp) {
    if (since >= 0.5) {
      late.push_back(ms);
    } else {
      first_half += ms;
      ++first_runs;
    }
  }
  const double hot = median(late);
  nlohmann::json power = {{"hot_factor", 1.0}, {"heat_ms", 0.0}, {"recover_ms", 0.0},
                          {"probe", {{"cool_ms", cool}, {"hot_ms", hot}}}};
  if (cool <= 0 || hot <= 0) return power;
  const double factor = std::max(1.0, hot / cool);
  if (factor < 1.02) return power;
  const double heat = std::clamp((factor * first_runs * cool - first_half) / (factor - 1), 0.0, 500.0);
  double recover = probe.after_gap.back().first;
  for (const auto& [gap, ms] : probe.after_gap)
    if (ms <= cool + 0.5 * (hot - cool)) {
      recover = gap;
      break;
    }
  power["hot_factor"] = std::round(factor * 1e4) / 1e4;
  power["heat_ms"] = std::round(heat * 10) / 10;
  power["recover_ms"] = recover;
  return power;
}

const ModelProfile* Profile::find(const std::string& spec, int tp, int pp) const {
  for (const auto& m : models)
    if (m.spec == spec && m.tp == tp && m.pp == pp) return &m;
  return nullptr;
}

Profile readProfile(const nlohmann::json& doc, const std::string& name) {
  const JsonReader root(doc, name + ": $");
  if (!root.isObject()) root.fail("a profile is a JSON object (docs/specs.md, \"Profiles\")");
  root.expectObject({"format", "version", "provenance", "links", "realtime", "models"});
  const JsonReader format = root.at("format");
  if (format.asString() != "computron-profile") format.fail("expected \"computron-profile\"");
  const JsonReader version = root.at("version");
  if (version.asInt() != 1) version.fail("this build reads profile version 1");
  Profile p;
  p.path = name;
  const JsonReader provenance = root.at("provenance");
  if (!provenance.isObject()) provenance.fail("expected an object (GPU, driver, build, date, grid)");
  provenance.at("tool").asString();
  provenance.at("date").asString();
  p.provenance = provenance.json();
  if (auto links = root.find("links")) {
    links->expectObject(
        {"host_link_gbps", "host_link_latency_us", "nvlink_gbps", "evict_us", "shared_host_gbps", "loads_in_order",
         "measurements"});
    auto figure = [&](const char* key, double lo, double hi) -> std::optional<double> {
      auto v = links->find(key);
      if (!v) return std::nullopt;
      return v->asDoubleIn(lo, hi);
    };
    p.links.host_link_gbps = figure("host_link_gbps", 1e-3, 1e6);
    p.links.host_link_latency_us = figure("host_link_latency_us", 0, 1e9);
    p.links.nvlink_gbps = figure("nvlink_gbps", 1e-3, 1e6);
    p.links.evict_us = figure("evict_us", 0, 1e9);
    p.links.shared_host_gbps = figure("shared_host_gbps", 1e-3, 1e6);
    if (auto v = links->find("loads_in_order")) p.links.loads_in_order = v->asBool();
    if (auto m = links->find("measurements"))
      if (!m->isArray()) m->fail("expected an array");
  }
  if (auto realtime = root.find("realtime")) {
    realtime->expectObject({"wake_ms"});
    if (auto wake = realtime->find("wake_ms")) p.wake_ms = wake->asDoubleIn(0, 1e4);
  }
  const JsonReader models = root.at("models");
  if (!models.isArray()) models.fail("expected an array of model profiles");
  if (models.size() == 0) models.fail("a profile needs at least one model");
  for (std::size_t i = 0; i < models.size(); ++i) {
    const JsonReader m = models.at(i);
    m.expectObject({"spec", "tp", "pp", "prefill", "decode", "batch_tail_ms", "first_batch_extra_ms", "decode_graph_ms", "idle", "power"});
    ModelProfile mp;
    const JsonReader spec = m.at("spec");
    mp.spec = spec.asString();
    if (!isModelPreset(mp.spec)) {
      std::string known;
      for (const auto& n : modelPresetNames()) known += (known.empty() ? "" : ", ") + n;
      spec.fail("unknown model \"" + mp.spec + "\" (known: " + known + ")");
    }
    mp.tp = static_cast<int>(m.at("tp").asIntIn(1, 1024));
    mp.pp = static_cast<int>(m.at("pp").asIntIn(1, 1024));
    if (p.find(mp.spec, mp.tp, mp.pp) != nullptr)
      m.fail("a second profile of " + mp.spec + " at tp " + std::to_string(mp.tp) + ", pp " + std::to_string(mp.pp));
    mp.prefill = readGrid(m.at("prefill"), "prompt_tokens");
    mp.prefill_shape = fitPrefillShape(mp.prefill);
    mp.decode = readGrid(m.at("decode"), "context");
    mp.batch_tail_ms = readMillis(m, "batch_tail_ms");
    mp.first_batch_extra_ms = readMillis(m, "first_batch_extra_ms");
    if (auto graph = m.find("decode_graph_ms")) {
      if (graph->isNumber()) {
        mp.decode_graph_batch = {1};
        mp.decode_graph_ms = {readMillis(m, "decode_graph_ms")};
      } else {
        graph->expectObject({"batch", "ms"});
        mp.decode_graph_batch = readAxis(graph->at("batch"), static_cast<double>(kMaxRequestTokens));
        const JsonReader ms = graph->at("ms");
        if (!ms.isArray() || ms.size() != mp.decode_graph_batch.size())
          ms.fail("expected an array with one value per batch point (" + std::to_string(mp.decode_graph_batch.size()) + ")");
        for (std::size_t k = 0; k < ms.size(); ++k) mp.decode_graph_ms.push_back(ms.at(k).asDoubleIn(0, 1e7));
      }
    }
    if (auto idle = m.find("idle")) {
      idle->expectObject({"gap_ms", "extra_ms"});
      mp.idle_gap_ms = readAxis(idle->at("gap_ms"), 1e7);
      const JsonReader extra = idle->at("extra_ms");
      if (!extra.isArray() || extra.size() != mp.idle_gap_ms.size())
        extra.fail("expected an array with one value per gap_ms point (" + std::to_string(mp.idle_gap_ms.size()) + ")");
      for (std::size_t k = 0; k < extra.size(); ++k) mp.idle_extra_ms.push_back(extra.at(k).asDoubleIn(0, 1e7));
    }
    if (auto power = m.find("power")) {
      power->expectObject({"hot_factor", "heat_ms", "recover_ms", "probe"});
      mp.power.hot_factor = power->at("hot_factor").asDoubleIn(1, 4);
      mp.power.heat_ms = power->at("heat_ms").asDoubleIn(0, 1e7);
      mp.power.recover_ms = power->at("recover_ms").asDoubleIn(0, 1e7);
    }
    p.models.push_back(std::move(mp));
  }
  return p;
}

Profile readProfileFile(const std::string& path) { return readProfile(readJsonFile(path), path); }

}  // namespace computron
