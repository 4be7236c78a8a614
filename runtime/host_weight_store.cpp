#include "runtime/host_weight_store.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace computron::runtime {
namespace {

std::int64_t pageSize() {
  const long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? p : 4096;
}

std::string gib(std::int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / static_cast<double>(kGiB));
  return buf;
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::pair<std::int64_t, std::string> HostWeightStore::hostMemoryLimit(std::int64_t option) {
  if (option > 0) return {option, "option"};
  std::int64_t mem_total = 0;
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    std::int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit) {
      if (key == "MemTotal:") {
        mem_total = kb * 1024;
        break;
      }
    }
  }
  std::int64_t cgroup = 0;
  {
    std::ifstream in("/sys/fs/cgroup/memory.max");
    std::string v;
    if (in >> v && v != "max") {
      try {
        cgroup = std::stoll(v);
      } catch (...) {
        cgroup = 0;
      }
    }
  }
  if (cgroup > 0 && (mem_total == 0 || cgroup < mem_total)) return {cgroup, "cgroup memory.max"};
  return {mem_total, "MemTotal"};
}

HostWeightStore::HostWeightStore(const std::vector<ShardRequest>& requests, HostStoreOptions options)
    : options_(options) {
  const std::int64_t page = pageSize();
  if (options_.pin_piece_bytes <= 0 || options_.pin_piece_bytes % page != 0) {
    throw std::invalid_argument("pin_piece_bytes must be a positive multiple of the page size");
  }
  const int threads = options_.threads > 0 ? options_.threads
                                           : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  stats_.threads = threads;

  // Refuse before touching any memory.
  std::int64_t need = 0;
  for (const auto& r : requests)
    if (r.held) need += (r.layout.bytes + page - 1) / page * page;
  const auto [limit, source] = hostMemoryLimit(options_.host_memory_limit);
  const auto usable = static_cast<std::int64_t>(static_cast<double>(limit) * (1.0 - options_.reserve_fraction));
  if (limit > 0 && need > usable) {
    std::ostringstream msg;
    msg << "host weight store: the models need " << gib(need) << " of host memory for " << requests.size()
        << " shards, but only " << gib(usable) << " is usable (limit " << gib(limit) << " from " << source << ", "
        << static_cast<int>(options_.reserve_fraction * 100) << "% kept for the rest of the system). "
        << "Register fewer or smaller models, or state the machine's memory with --host-memory-gib.";
    throw HostMemoryError(msg.str());
  }

  try {
    const auto fill_start = std::chrono::steady_clock::now();
    for (const auto& r : requests) {
      const auto key = std::make_pair(r.model, r.shard);
      if (shards_.count(key) != 0) throw std::invalid_argument("shard registered twice");
      if (r.layout.bytes <= 0) throw std::invalid_argument("shard with no bytes");
      HostShard s;
      s.model = r.model;
      s.shard = r.shard;
      s.layout = r.layout;
      s.segments = shardSegments(r.layout);
      s.dtype = r.dtype;
      s.bytes = r.layout.bytes;
      s.held = r.held;
      if (!r.held) {
        shards_.emplace(key, s);
        continue;
      }
      s.mapped_bytes = (s.bytes + page - 1) / page * page;
      void* p = ::mmap(nullptr, static_cast<std::size_t>(s.mapped_bytes), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        throw HostMemoryError("host weight store: mmap of " + gib(s.mapped_bytes) + " failed");
      }
      s.data = static_cast<std::byte*>(p);
      shards_.emplace(key, s);
      // Filling touches every page, which cudaHostRegister of touched memory needs to be fast.
      if (options_.fill) {
        options_.fill(r, std::span<std::byte>(s.data, static_cast<std::size_t>(s.bytes)));
      } else {
        generateShard(s.data, s.segments, s.dtype, shardSeed(r.model_seed, r.shard), threads);
      }
    }
    stats_.fill_seconds = secondsSince(fill_start);

    // Pin and checksum in pieces, several threads at once. Pieces are page aligned (the region
    // is) and multiples of 8 bytes, so each piece's checksum is a partial sum of the whole.
    struct Piece {
      HostShard* shard;
      std::int64_t offset;
      std::int64_t bytes;
      std::uint64_t sum = 0;
      bool pinned = false;
    };
    std::vector<Piece> pieces;
    for (auto& [key, s] : shards_) {
      for (std::int64_t off = 0; off < s.mapped_bytes; off += options_.pin_piece_bytes) {
        pieces.push_back({&s, off, std::min(options_.pin_piece_bytes, s.mapped_bytes - off)});
      }
    }
    const auto pin_start = std::chrono::steady_clock::now();
    std::atomic<std::size_t> next{0};
    std::atomic<std::int64_t> pin_ns{0};
    std::mutex error_mutex;
    std::string error;
    auto worker = [&] {
      for (std::size_t i = next++; i < pieces.size(); i = next++) {
        Piece& pc = pieces[i];
        try {
          if (options_.pinner != nullptr) {
            const auto t0 = std::chrono::steady_clock::now();
            options_.pinner->pin(pc.shard->data + pc.offset, static_cast<std::size_t>(pc.bytes));
            pc.pinned = true;
            pin_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
          }
          const std::int64_t image = std::min(pc.bytes, pc.shard->bytes - pc.offset);
          if (image > 0) pc.sum = checksumRange(pc.shard->data + pc.offset, image, static_cast<std::uint64_t>(pc.offset / 8));
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (error.empty()) error = e.what();
        }
      }
    };
    const int pool_size = std::min<int>(threads, static_cast<int>(pieces.size()));
    std::vector<std::thread> pool;
    for (int t = 1; t < pool_size; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    stats_.pin_seconds = secondsSince(pin_start);
    stats_.pin_cpu_seconds = static_cast<double>(pin_ns.load()) / 1e9;
    for (const auto& pc : pieces) {
      if (pc.pinned) pinned_pieces_.emplace_back(pc.shard->data + pc.offset, pc.bytes);
      pc.shard->checksum += pc.sum;
    }
    if (!error.empty()) throw HostMemoryError("host weight store: pinning failed: " + error);
  } catch (...) {
    release();  // what was mapped and pinned so far
    throw;
  }
  for (const auto& [key, s] : shards_) {
    if (!s.held) continue;
    ++stats_.shards;
    stats_.bytes += s.bytes;
  }
}

HostWeightStore::~HostWeightStore() { release(); }

void HostWeightStore::release() {
  for (const auto& [ptr, bytes] : pinned_pieces_) {
    try {
      options_.pinner->unpin(ptr, static_cast<std::size_t>(bytes));
    } catch (...) {
      // Unpinning at teardown cannot be recovered from; the unmap below still frees the memory.
    }
  }
  pinned_pieces_.clear();
  for (auto& [key, s] : shards_) {
    if (s.data != nullptr) ::munmap(s.data, static_cast<std::size_t>(s.mapped_bytes));
    s.data = nullptr;
  }
  shards_.clear();
}

const HostShard* HostWeightStore::find(ModelId model, int shard) const {
  auto it = shards_.find({model, shard});
  return it == shards_.end() ? nullptr : &it->second;
}

const HostShard& HostWeightStore::at(ModelId model, int shard) const {
  const HostShard* s = find(model, shard);
  if (s == nullptr) {
    throw std::out_of_range("host weight store: no shard " + std::to_string(shard) + " of model " +
                            std::to_string(model));
  }
  return *s;
}

void HostWeightStore::setRemoteChecksum(ModelId model, int shard, std::uint64_t checksum) {
  auto it = shards_.find({model, shard});
  if (it == shards_.end()) {
    throw std::out_of_range("host weight store: no shard " + std::to_string(shard) + " of model " +
                            std::to_string(model));
  }
  if (it->second.held) throw std::logic_error("host weight store: the checksum of a held shard is computed here");
  it->second.checksum = checksum;
}

std::vector<const HostShard*> HostWeightStore::shards() const {
  std::vector<const HostShard*> out;
  for (const auto& [key, s] : shards_) out.push_back(&s);
  return out;
}

}  // namespace computron::runtime
