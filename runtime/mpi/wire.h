// A byte buffer for messages between ranks: fixed-width little-endian-as-stored integers, doubles,
// strings and vectors appended in order and read back in the same order. Both ends run the same
// build on the same architecture (one mpirun launch), so values travel in native byte order. A
// read past the end, or a length that does not fit what is left, throws WireError: a truncated
// or corrupt message never yields a half-read value.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace computron::runtime::wire {

class WireError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Writer {
 public:
  template <typename T>
  void put(T value) {
    static_assert(std::is_arithmetic_v<T> || std::is_enum_v<T>, "put: arithmetic or enum");
    const auto* p = reinterpret_cast<const char*>(&value);
    buf_.append(p, sizeof(T));
  }
  void putString(const std::string& s) {
    put<std::uint64_t>(s.size());
    buf_.append(s);
  }
  template <typename T>
  void putVector(const std::vector<T>& v) {
    put<std::uint64_t>(v.size());
    for (const T& x : v) put<T>(x);
  }
  std::string take() { return std::move(buf_); }
  const std::string& bytes() const { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  explicit Reader(const std::string& bytes) : data_(bytes.data()), size_(bytes.size()) {}

  template <typename T>
  T get() {
    static_assert(std::is_arithmetic_v<T> || std::is_enum_v<T>, "get: arithmetic or enum");
    need(sizeof(T));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  // A flag stored as one byte, 0 or 1; anything else is a corrupt message.
  bool getBool() {
    const auto b = get<std::uint8_t>();
    if (b > 1) throw WireError("message: a flag byte of " + std::to_string(b));
    return b == 1;
  }
  std::string getString() {
    const std::uint64_t n = count(1);
    std::string s(data_ + pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  template <typename T>
  std::vector<T> getVector() {
    const std::uint64_t n = count(sizeof(T));
    std::vector<T> v;
    v.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) v.push_back(get<T>());
    return v;
  }
  // A count of elements of at least `element_bytes` each that the rest of the message can hold.
  std::uint64_t count(std::size_t element_bytes) {
    const auto n = get<std::uint64_t>();
    if (element_bytes > 0 && n > (size_ - pos_) / element_bytes)
      throw WireError("message: a length of " + std::to_string(n) + " runs past the end");
    return n;
  }
  bool done() const { return pos_ == size_; }
  void expectDone() const {
    if (!done()) throw WireError("message: " + std::to_string(size_ - pos_) + " bytes left over");
  }

 private:
  void need(std::size_t n) const {
    if (n > size_ - pos_) throw WireError("message: truncated");
  }
  const char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

}  // namespace computron::runtime::wire
