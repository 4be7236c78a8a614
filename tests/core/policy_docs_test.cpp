// docs/policies.md against the registries: every registered policy appears in the table of its
// kind, every name in those tables is registered, a description column matches the registry's
// one-line description, and the policy-set table states each set's real choices.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/core/engine.h"
#include "common/core/policy.h"

namespace computron {
namespace {

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// The cells of a Markdown table row "| a | b |".
std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  std::string body = trim(line);
  if (body.size() < 2 || body.front() != '|' || body.back() != '|') return out;
  body = body.substr(1, body.size() - 2);
  std::stringstream in(body);
  std::string cell;
  while (std::getline(in, cell, '|')) out.push_back(trim(cell));
  return out;
}

struct DocTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  int line = 0;  // of the header, 1-based
};

std::vector<DocTable> tablesOf(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<DocTable> tables;
  std::string line;
  int number = 0;
  bool in_table = false;
  while (std::getline(in, line)) {
    ++number;
    const std::vector<std::string> row = cells(line);
    if (row.empty()) {
      in_table = false;
      continue;
    }
    if (!in_table) {
      tables.push_back({row, {}, number});
      in_table = true;
    } else if (row[0].find_first_not_of("-: ") != std::string::npos) {
      tables.back().rows.push_back(row);
    }
  }
  return tables;
}

// "`lru`" -> "lru"; anything else -> "".
std::string codeName(const std::string& cell) {
  if (cell.size() < 3 || cell.front() != '`' || cell.back() != '`') return "";
  return cell.substr(1, cell.size() - 2);
}

TEST(PolicyDocs, TablesListExactlyTheRegisteredPolicies) {
  const std::string path = std::string(COMPUTRON_SOURCE_DIR) + "/docs/policies.md";
  std::map<std::string, const PolicyKindListing*> kinds;
  const std::vector<PolicyKindListing> listings = registeredPolicies();
  for (const auto& kind : listings) kinds[kind.key] = &kind;

  std::map<std::string, std::set<std::string>> documented;
  for (const DocTable& table : tablesOf(path)) {
    auto kind = kinds.find(table.header[0]);
    if (kind == kinds.end()) continue;  // not a table of registered policies
    std::map<std::string, std::string> descriptions;
    for (const auto& p : kind->second->policies) descriptions[p.name] = p.description;
    int description_column = -1;
    for (std::size_t c = 0; c < table.header.size(); ++c)
      if (table.header[c] == "description") description_column = static_cast<int>(c);
    for (const auto& row : table.rows) {
      const std::string name = codeName(row[0]);
      SCOPED_TRACE(path + ":" + std::to_string(table.line) + " (" + table.header[0] + " table), row " + row[0]);
      EXPECT_FALSE(name.empty()) << "the first cell of a row names the policy in backticks";
      if (!descriptions.count(name)) {
        ADD_FAILURE() << "'" << name << "' is not registered among the " << kind->second->title;
        continue;
      }
      EXPECT_TRUE(documented[kind->first].insert(name).second) << "listed twice";
      if (description_column >= 0 && static_cast<std::size_t>(description_column) < row.size()) {
        EXPECT_EQ(row[static_cast<std::size_t>(description_column)], descriptions[name]);
      }
    }
  }
  for (const auto& kind : listings) {
    for (const auto& p : kind.policies) {
      EXPECT_TRUE(documented[kind.key].count(p.name))
          << kind.title << ": '" << p.name << "' is registered but not in a `" << kind.key << "` table of " << path;
    }
  }
}

// The policy-set table's eviction, queue, prefetch, routing and admission columns are the sets'.
TEST(PolicyDocs, PolicySetTableStatesEachSetsChoices) {
  const std::string path = std::string(COMPUTRON_SOURCE_DIR) + "/docs/policies.md";
  int set_tables = 0;
  for (const DocTable& table : tablesOf(path)) {
    if (table.header[0] != "set") continue;
    ++set_tables;
    for (const auto& row : table.rows) {
      const std::string name = codeName(row[0]);
      SCOPED_TRACE("set " + name);
      if (!PolicySetChoice::registry().find(name)) continue;  // reported by the test above
      PolicyConfig config;
      config.name = name;
      applyPolicySet(config);
      const std::map<std::string, std::string> actual = {{"eviction", config.eviction.name()},
                                                         {"queue", config.queue.name()},
                                                         {"prefetch", config.prefetch.name()},
                                                         {"routing", config.routing.name()},
                                                         {"admission", config.admission ? "on" : "off"}};
      for (std::size_t c = 1; c < table.header.size() && c < row.size(); ++c) {
        auto it = actual.find(table.header[c]);
        if (it != actual.end()) {
          EXPECT_EQ(row[c], it->second) << "column " << table.header[c];
        }
      }
    }
  }
  EXPECT_EQ(set_tables, 1);
}

}  // namespace
}  // namespace computron
