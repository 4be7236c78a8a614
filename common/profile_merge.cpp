#include "common/profile_merge.h"

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "common/types.h"

namespace computron {

namespace {

std::string layoutLabel(int tp, int pp) { return std::to_string(tp) + "x" + std::to_string(pp); }

std::string entryLabel(const nlohmann::json& entry) {
  return entry.at("spec").get<std::string>() + " " + layoutLabel(entry.at("tp").get<int>(), entry.at("pp").get<int>());
}

bool sameEntry(const nlohmann::json& a, const nlohmann::json& b) {
  return a.at("spec") == b.at("spec") && a.at("tp") == b.at("tp") && a.at("pp") == b.at("pp");
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// "1-64 (7)": an axis's first and last point and how many points it has.
std::string axisRange(const std::vector<double>& axis) {
  if (axis.empty()) return "-";
  std::ostringstream s;
  s << fixed(axis.front(), 0);
  if (axis.size() > 1) s << "-" << fixed(axis.back(), 0);
  s << " (" << axis.size() << ")";
  return s.str();
}

std::string provenanceString(const nlohmann::json& provenance, const char* key) {
  auto it = provenance.find(key);
  if (it == provenance.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

}  // namespace

const std::vector<std::string>& profileEntryMembers() {
  static const std::vector<std::string> members = {"prefill", "decode",          "batch_tail_ms", "first_batch_extra_ms",
                                                   "idle",    "decode_graph_ms", "power"};
  return members;
}

nlohmann::json mergeProfiles(const nlohmann::json& base, const std::string& base_name,
                             const std::vector<std::pair<std::string, nlohmann::json>>& additions,
                             const ProfileMergeOptions& options) {
  readProfile(base, base_name);  // refuses a malformed base, naming its JSON path
  for (const std::string& member : options.only) {
    const auto& known = profileEntryMembers();
    if (std::find(known.begin(), known.end(), member) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw ConfigError("--only: \"" + member + "\" is not a member of a profile's model entry (members: " + list + ")");
    }
  }
  nlohmann::json merged = base;
  bool took_links = false;
  for (const auto& [name, doc] : additions) {
    readProfile(doc, name);
    nlohmann::json taken = nlohmann::json::array();
    const nlohmann::json& models = doc.at("models");
    for (std::size_t i = 0; i < models.size(); ++i) {
      const nlohmann::json& entry = models[i];
      nlohmann::json* target = nullptr;
      for (auto& existing : merged["models"])
        if (sameEntry(existing, entry)) target = &existing;
      if (options.only.empty()) {
        if (target != nullptr)
          *target = entry;
        else
          merged["models"].push_back(entry);
      } else {
        if (target == nullptr)
          throw ConfigError(name + ": $.models[" + std::to_string(i) + "]: " + entryLabel(entry) + " has no entry in " +
                            base_name + " to take --only members into (merge it whole first)");
        for (const std::string& member : options.only) {
          if (entry.contains(member))
            (*target)[member] = entry.at(member);
          else
            target->erase(member);
        }
      }
      taken.push_back(entryLabel(entry));
    }
    nlohmann::json run = {{"merged_from", std::filesystem::path(name).filename().string()}, {"entries", taken}};
    if (options.only.empty())
      run["members"] = "all";
    else
      run["members"] = options.only;
    if (options.links && (doc.contains("links") || doc.contains("realtime"))) {
      for (const char* key : {"links", "realtime"}) {
        if (doc.contains(key))
          merged[key] = doc.at(key);
        else
          merged.erase(key);
      }
      run["links"] = true;
      took_links = true;
    }
    const nlohmann::json& provenance = doc.at("provenance");
    for (const char* key : {"date", "seconds", "gpu", "gpu_count", "driver", "cuda_runtime", "build", "command", "runs"})
      if (provenance.contains(key)) run[key] = provenance.at(key);
    nlohmann::json& runs = merged["provenance"]["runs"];
    if (!runs.is_array()) runs = nlohmann::json::array();
    runs.push_back(std::move(run));
  }
  if (options.links && !took_links) throw ConfigError("--links: none of the profiles merged in has links or realtime figures");
  readProfile(merged, base_name + " (merged)");
  return merged;
}

std::string describeProfile(const Profile& profile) {
  std::ostringstream out;
  const nlohmann::json& prov = profile.provenance;
  out << "profile " << profile.path << ": ";
  const std::string gpu = provenanceString(prov, "gpu");
  out << (gpu.empty() ? "GPU not named" : gpu);
  if (prov.contains("gpu_count")) out << " x" << provenanceString(prov, "gpu_count");
  if (prov.contains("driver")) out << ", driver " << provenanceString(prov, "driver");
  out << ", " << provenanceString(prov, "date");
  if (prov.contains("runs") && prov.at("runs").is_array())
    out << ", " << prov.at("runs").size() << (prov.at("runs").size() == 1 ? " run" : " runs") << " merged in";
  out << "\n";
  const LinkProfile& l = profile.links;
  if (l.host_link_gbps || l.nvlink_gbps || l.evict_us || l.loads_in_order) {
    out << "links:";
    if (l.host_link_gbps) out << " host link " << fixed(*l.host_link_gbps, 1) << " GB/s";
    if (l.host_link_latency_us) out << " + " << fixed(*l.host_link_latency_us, 1) << " us";
    if (l.shared_host_gbps) out << ", two GPUs together " << fixed(*l.shared_host_gbps, 1) << " GB/s";
    if (l.nvlink_gbps) out << ", NVLink " << fixed(*l.nvlink_gbps, 1) << " GB/s";
    if (l.evict_us) out << ", eviction " << fixed(*l.evict_us, 1) << " us";
    if (l.loads_in_order) out << ", loads onto one GPU " << (*l.loads_in_order ? "in order" : "shared");
    out << "\n";
  } else {
    out << "links: none (the cluster preset's)\n";
  }
  out << "realtime: the driver wakes " << fixed(profile.wake_ms, 3) << " ms late\n\n";
  out << std::left << std::setw(14) << "model" << std::setw(8) << "layout" << std::setw(26) << "prefill batch x prompt"
      << std::setw(26) << "decode batch x context" << std::setw(14) << "power" << std::setw(18) << "decode graph ms"
      << "tail ms\n";
  for (const ModelProfile& m : profile.models) {
    std::string power = "-";
    if (m.power.hot_factor > 1) power = fixed(m.power.hot_factor, 3) + "x";
    std::string graph = "-";
    if (!m.decode_graph_ms.empty()) {
      const auto [lo, hi] = std::minmax_element(m.decode_graph_ms.begin(), m.decode_graph_ms.end());
      graph = *lo == *hi ? fixed(*lo, 2) : fixed(*lo, 2) + "-" + fixed(*hi, 2);
    }
    out << std::left << std::setw(14) << m.spec << std::setw(8) << layoutLabel(m.tp, m.pp) << std::setw(26)
        << (axisRange(m.prefill.batch) + " x " + axisRange(m.prefill.tokens)) << std::setw(26)
        << (axisRange(m.decode.batch) + " x " + axisRange(m.decode.tokens)) << std::setw(14) << power << std::setw(18)
        << graph << fixed(m.batch_tail_ms, 3) << "\n";
  }
  return out.str();
}

namespace {

std::string lookupText(const ProfileGrid& grid, int batch, int tokens) {
  const ProfileGrid::Lookup l = grid.at(batch, tokens);
  const bool point = std::find(grid.batch.begin(), grid.batch.end(), static_cast<double>(batch)) != grid.batch.end() &&
                     std::find(grid.tokens.begin(), grid.tokens.end(), static_cast<double>(tokens)) != grid.tokens.end();
  return fixed(l.ms, 3) + " ms, " +
         (point ? "a measured point" : l.outside ? "outside the measured grid (extrapolated)" : "interpolated");
}

}  // namespace

std::string describeLookup(const ModelProfile& entry, int batch, int tokens) {
  std::ostringstream out;
  out << entry.spec << " " << layoutLabel(entry.tp, entry.pp) << " at batch " << batch << ", " << tokens << " tokens:\n";
  out << "  prefill of " << batch << " prompts of " << tokens << " tokens: " << lookupText(entry.prefill, batch, tokens);
  if (entry.power.hot_factor > 1) {
    const double grid_ms = entry.prefill.at(batch, tokens).ms;
    out << "; after sustained work up to +" << fixed(entry.hotPrefillExtraMs(grid_ms, 1e12), 3) << " ms (x"
        << fixed(entry.power.hot_factor, 3) << " past " << fixed(entry.power.heat_ms, 1) << " ms of work)";
  }
  out << "\n  a decode step of " << batch << " sequences at context " << tokens << ": "
      << lookupText(entry.decode, batch, tokens) << "\n";
  out << "  a decode graph's capture at batch " << batch << ": " << fixed(entry.decodeGraphMs(batch), 3) << " ms\n";
  return out.str();
}

namespace {

GridRatios gridRatios(const ProfileGrid& old_grid, const ProfileGrid& new_grid) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < old_grid.batch.size(); ++i)
    for (std::size_t j = 0; j < old_grid.tokens.size(); ++j) {
      const auto bi = std::find(new_grid.batch.begin(), new_grid.batch.end(), old_grid.batch[i]);
      const auto tj = std::find(new_grid.tokens.begin(), new_grid.tokens.end(), old_grid.tokens[j]);
      if (bi == new_grid.batch.end() || tj == new_grid.tokens.end()) continue;
      const double now = new_grid.ms[static_cast<std::size_t>(bi - new_grid.batch.begin())]
                                    [static_cast<std::size_t>(tj - new_grid.tokens.begin())];
      ratios.push_back(now / old_grid.ms[i][j]);
    }
  GridRatios r;
  if (ratios.empty()) return r;
  std::sort(ratios.begin(), ratios.end());
  r.points = static_cast<int>(ratios.size());
  r.min = ratios.front();
  r.max = ratios.back();
  const std::size_t n = ratios.size();
  r.median = n % 2 == 1 ? ratios[n / 2] : (ratios[n / 2 - 1] + ratios[n / 2]) / 2;
  return r;
}

std::string ratiosText(const GridRatios& r) {
  if (r.points == 0) return "no shared point";
  return fixed(r.min, 3) + " / " + fixed(r.median, 3) + " / " + fixed(r.max, 3) + " (" + std::to_string(r.points) + ")";
}

}  // namespace

ProfileDiff diffProfiles(const Profile& old_profile, const Profile& new_profile) {
  ProfileDiff d;
  for (const ModelProfile& o : old_profile.models) {
    const ModelProfile* n = new_profile.find(o.spec, o.tp, o.pp);
    if (n == nullptr) {
      d.only_old.push_back(o.spec + " " + layoutLabel(o.tp, o.pp));
      continue;
    }
    d.shared.push_back({o.spec, o.tp, o.pp, gridRatios(o.prefill, n->prefill), gridRatios(o.decode, n->decode)});
  }
  for (const ModelProfile& n : new_profile.models)
    if (old_profile.find(n.spec, n.tp, n.pp) == nullptr) d.only_new.push_back(n.spec + " " + layoutLabel(n.tp, n.pp));
  return d;
}

std::string describeDiff(const ProfileDiff& diff, const std::string& old_name, const std::string& new_name) {
  std::ostringstream out;
  out << "new / old at the grid points both hold (min / median / max, and how many): " << new_name << " against "
      << old_name << "\n";
  out << std::left << std::setw(14) << "model" << std::setw(8) << "layout" << std::setw(32) << "prefill" << "decode\n";
  for (const EntryDiff& e : diff.shared)
    out << std::left << std::setw(14) << e.spec << std::setw(8) << layoutLabel(e.tp, e.pp) << std::setw(32)
        << ratiosText(e.prefill) << ratiosText(e.decode) << "\n";
  for (const std::string& name : diff.only_old) out << "only in " << old_name << ": " << name << "\n";
  for (const std::string& name : diff.only_new) out << "only in " << new_name << ": " << name << "\n";
  return out.str();
}

}  // namespace computron
