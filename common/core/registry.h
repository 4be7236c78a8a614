// One registry per policy kind: each policy is registered once, with its name, a one-line
// description and a factory. Everything that needs a policy's name reads it here: the scenario
// parser (names become Choice handles when the input is read), the error lists of unknown names,
// `computron presets`, summary.json and the docs check. The engine holds Choice handles and calls
// the policy objects behind them; it never compares names.
//
// A registry is built in full the first time it is asked for (a function-local static, so
// threads may share it) and never changes afterwards. Policies are stateless const objects:
// one instance per entry, made by its factory when it is registered, serves every engine.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/types.h"

namespace computron {

template <typename Policy>
class Registry {
 public:
  struct Entry {
    std::string name;
    std::string description;  // one line, shown by `computron presets` and in docs/policies.md
    std::function<std::unique_ptr<const Policy>()> factory;
    std::shared_ptr<const Policy> instance;  // made by `factory` once, shared by every user
  };

  // `kind` names the kind in messages: "unknown <kind> 'x' (known: ...)".
  explicit Registry(std::string kind) : kind_(std::move(kind)) {}
  Registry(Registry&&) = default;  // entries keep their addresses (a moved deque keeps its blocks)
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registers a policy; a name registered twice is a programming error.
  void add(std::string name, std::string description, std::function<std::unique_ptr<const Policy>()> factory) {
    if (find(name)) throw std::logic_error(kind_ + " '" + name + "' is registered twice");
    std::shared_ptr<const Policy> instance = factory();
    entries_.push_back(Entry{std::move(name), std::move(description), std::move(factory), std::move(instance)});
  }

  const std::string& kind() const { return kind_; }
  // In registration order; the deque keeps every entry where it is, so handles stay valid.
  const std::deque<Entry>& entries() const { return entries_; }
  const Entry* find(std::string_view name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  // The entry named `name`; ConfigError with unknownMessage(name) when there is none.
  const Entry& at(std::string_view name) const {
    if (const Entry* e = find(name)) return *e;
    throw ConfigError(unknownMessage(name));
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.push_back(e.name);
    return out;
  }
  // "unknown eviction policy 'x' (known: lru, lfu, ...)"
  std::string unknownMessage(std::string_view name) const {
    std::string known;
    for (const auto& e : entries_) known += (known.empty() ? "" : ", ") + e.name;
    return "unknown " + kind_ + " '" + std::string(name) + "' (known: " + known + ")";
  }

 private:
  std::string kind_;
  std::deque<Entry> entries_;
};

// A typed choice of one registered policy: what configurations hold instead of a name. Made from
// a name (throwing ConfigError with the known list for an unknown one), it compares by identity
// (`choice == "lru"` makes a handle of "lru" first, so an unregistered name throws rather than
// comparing false) and gives the policy object, its name and its description. The registry of `Policy` is found
// through `policyRegistry(const Policy*)`, declared next to each policy interface.
template <typename Policy>
class Choice {
 public:
  using Entry = typename Registry<Policy>::Entry;

  // Implicit, so that configurations built in code read as before: `config.policy.eviction = "lfu"`.
  Choice(const char* name) : Choice(std::string_view(name)) {}            // NOLINT(google-explicit-constructor)
  Choice(const std::string& name) : Choice(std::string_view(name)) {}     // NOLINT(google-explicit-constructor)
  explicit Choice(std::string_view name) : entry_(&registry().at(name)) {}
  explicit Choice(const Entry& entry) : entry_(&entry) {}

  static const Registry<Policy>& registry() { return policyRegistry(static_cast<const Policy*>(nullptr)); }

  const std::string& name() const { return entry_->name; }
  const std::string& description() const { return entry_->description; }
  const Policy& policy() const { return *entry_->instance; }
  const Policy* operator->() const { return entry_->instance.get(); }

  friend bool operator==(const Choice& a, const Choice& b) { return a.entry_ == b.entry_; }
  friend std::ostream& operator<<(std::ostream& out, const Choice& c) { return out << c.name(); }

 private:
  const Entry* entry_;
};

}  // namespace computron
