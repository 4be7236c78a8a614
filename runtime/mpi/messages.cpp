#include "runtime/mpi/messages.h"

#include <fstream>

#include "runtime/mpi/wire.h"

namespace computron::runtime::rank {
namespace {

using wire::Reader;
using wire::WireError;
using wire::Writer;

void expectType(Reader& r, MsgType expected) {
  const auto type = r.get<MsgType>();
  if (type != expected)
    throw WireError("message: type " + std::to_string(static_cast<int>(type)) + " where " +
                    std::to_string(static_cast<int>(expected)) + " was expected");
}

}  // namespace

MsgType peekType(const std::string& message) {
  if (message.empty()) throw WireError("message: empty");
  const auto type = static_cast<MsgType>(message.front());
  if (type < MsgType::kHello || type > MsgType::kCancel)
    throw WireError("message: unknown type " + std::to_string(static_cast<int>(message.front())));
  return type;
}

std::string clockId(const std::string& host) {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string boot;
  std::getline(in, boot);
  return host + "/" + boot;
}

std::string encodeHello(const Hello& hello) {
  Writer w;
  w.put(MsgType::kHello);
  w.putVector(hello.gpus);
  w.put<std::uint64_t>(hello.describe.size());
  for (const auto& d : hello.describe) w.putString(d);
  w.put<std::uint64_t>(hello.shards.size());
  for (const auto& s : hello.shards) {
    w.put(s.model);
    w.put(s.shard);
    w.put(s.bytes);
    w.put(s.checksum);
  }
  w.putString(hello.host);
  w.putString(hello.clock);
  w.putString(hello.error);
  return w.take();
}

Hello decodeHello(const std::string& message) {
  Reader r(message);
  expectType(r, MsgType::kHello);
  Hello h;
  h.gpus = r.getVector<GpuId>();
  for (std::uint64_t n = r.count(8); n > 0; --n) h.describe.push_back(r.getString());
  for (std::uint64_t n = r.count(sizeof(ModelId) + sizeof(int) + 16); n > 0; --n) {
    HelloShard s;
    s.model = r.get<ModelId>();
    s.shard = r.get<int>();
    s.bytes = r.get<std::int64_t>();
    s.checksum = r.get<std::uint64_t>();
    h.shards.push_back(s);
  }
  h.host = r.getString();
  h.clock = r.getString();
  h.error = r.getString();
  r.expectDone();
  return h;
}

std::string encodeJob(GpuId device, const PathJob& job) {
  Writer w;
  w.put(MsgType::kPathJob);
  w.put(device);
  w.put(job.op);
  w.put(job.path);
  w.put(job.model);
  w.put(job.host_model);
  w.put(job.shard);
  w.put(job.target);
  w.put(job.kind);
  w.put(job.dst_offset);
  w.put(job.src_offset);
  w.put<std::uint64_t>(job.chunks.size());
  for (const auto& c : job.chunks) {
    w.put(c.offset);
    w.put(c.bytes);
    w.put(c.segment);
  }
  w.put<std::uint64_t>(job.notify.size());
  for (const auto& n : job.notify) {
    w.put(n.after_chunk);
    w.put(n.covered_segment);
  }
  w.put<std::uint64_t>(job.first_chunk);
  return w.take();
}

std::string encodeJob(GpuId device, const VerifyJob& job) {
  Writer w;
  w.put(MsgType::kVerifyJob);
  w.put(device);
  w.put(job.op);
  w.put(job.offset);
  w.put(job.bytes);
  return w.take();
}

std::string encodeJob(GpuId device, const ExecJob& job) {
  Writer w;
  w.put(MsgType::kExecJob);
  w.put(device);
  w.put(job.batch);
  w.put(job.model);
  w.put(job.part);
  w.put<std::uint64_t>(job.weights.size());
  for (const auto& e : job.weights) {
    w.put(e.offset);
    w.put(e.bytes);
  }
  w.putVector(job.phase_ns);
  return w.take();
}

std::string encodeJob(GpuId device, const RelocateJob& job) {
  Writer w;
  w.put(MsgType::kRelocateJob);
  w.put(device);
  w.put(job.token);
  w.put<std::uint64_t>(job.moves.size());
  for (const auto& m : job.moves) {
    w.put(m.from);
    w.put(m.to);
    w.put(m.bytes);
  }
  return w.take();
}

DecodedJob decodeJob(const std::string& message) {
  Reader r(message);
  DecodedJob d;
  d.type = r.get<MsgType>();
  d.device = r.get<GpuId>();
  switch (d.type) {
    case MsgType::kPathJob: {
      PathJob& j = d.path;
      j.op = r.get<OpId>();
      j.path = r.get<int>();
      j.model = r.get<ModelId>();
      j.host_model = r.get<ModelId>();
      j.shard = r.get<int>();
      j.target = r.get<GpuId>();
      j.kind = r.get<PathKind>();
      if (j.kind != PathKind::kDirect && j.kind != PathKind::kRelay && j.kind != PathKind::kFromDevice)
        throw WireError("message: unknown path kind");
      j.dst_offset = r.get<std::int64_t>();
      j.src_offset = r.get<std::int64_t>();
      for (std::uint64_t n = r.count(20); n > 0; --n) {
        PlanChunk c;
        c.offset = r.get<std::int64_t>();
        c.bytes = r.get<std::int64_t>();
        c.segment = r.get<int>();
        j.chunks.push_back(c);
      }
      for (std::uint64_t n = r.count(8); n > 0; --n) {
        PlanNotify p;
        p.after_chunk = r.get<int>();
        p.covered_segment = r.get<int>();
        j.notify.push_back(p);
      }
      j.first_chunk = static_cast<std::size_t>(r.get<std::uint64_t>());
      break;
    }
    case MsgType::kVerifyJob:
      d.verify.op = r.get<OpId>();
      d.verify.offset = r.get<std::int64_t>();
      d.verify.bytes = r.get<std::int64_t>();
      break;
    case MsgType::kExecJob: {
      ExecJob& j = d.exec;
      j.batch = r.get<BatchId>();
      j.model = r.get<ModelId>();
      j.part = r.get<int>();
      for (std::uint64_t n = r.count(16); n > 0; --n) {
        Extent e;
        e.offset = r.get<std::int64_t>();
        e.bytes = r.get<std::int64_t>();
        j.weights.push_back(e);
      }
      j.phase_ns = r.getVector<Nanos>();
      break;
    }
    case MsgType::kRelocateJob:
      d.relocate.token = r.get<OpId>();
      for (std::uint64_t n = r.count(24); n > 0; --n) {
        DevicePool::Move m;
        m.from = r.get<std::int64_t>();
        m.to = r.get<std::int64_t>();
        m.bytes = r.get<std::int64_t>();
        d.relocate.moves.push_back(m);
      }
      break;
    default:
      throw WireError("message: type " + std::to_string(static_cast<int>(d.type)) + " is not a job");
  }
  r.expectDone();
  return d;
}

namespace {

void putRequest(Writer& w, const Request& r) {
  w.put(r.id);
  w.put(r.model);
  w.put(r.arrival);
  w.put(r.prompt_tokens);
  w.put(r.output_tokens);
}

Request getRequest(Reader& r) {
  Request q;
  q.id = r.get<RequestId>();
  q.model = r.get<ModelId>();
  q.arrival = r.get<Nanos>();
  q.prompt_tokens = r.get<std::int32_t>();
  q.output_tokens = r.get<std::int32_t>();
  return q;
}

constexpr std::size_t kRequestBytes = 8 + 4 + 8 + 4 + 4;

void putSequences(Writer& w, const std::vector<StepSequence>& seqs) {
  w.put<std::uint64_t>(seqs.size());
  for (const StepSequence& q : seqs) {
    putRequest(w, q.request);
    w.put(q.context);
    w.put(q.generated);
  }
}

std::vector<StepSequence> getSequences(Reader& r) {
  std::vector<StepSequence> out;
  for (std::uint64_t n = r.count(kRequestBytes + 8); n > 0; --n) {
    StepSequence q;
    q.request = getRequest(r);
    q.context = r.get<std::int32_t>();
    q.generated = r.get<std::int32_t>();
    out.push_back(q);
  }
  return out;
}

}  // namespace

std::string encodeExecPart(const ExecPart& part) {
  Writer w;
  w.put(MsgType::kExecPart);
  w.put(part.gpu);
  w.put(part.batch);
  w.put(part.part);
  w.put(part.model);
  w.put(part.shard);
  w.put(part.weights_offset);
  w.put<std::uint64_t>(part.requests.size());
  for (const Request& q : part.requests) putRequest(w, q);
  w.put<std::uint8_t>(part.step ? 1 : 0);
  if (part.step) {
    const StepCommand& c = *part.step;
    w.put(c.batch);
    w.put(c.step);
    w.put(c.model);
    w.put(c.tp);
    w.put(c.pp);
    w.putVector(c.gpus);
    putSequences(w, c.prefill);
    putSequences(w, c.decode);
    w.putVector(c.retired);
  }
  // Payloads: none, or one per request of the part (a step's: one per sequence it names), a flag
  // each: present or synthetic.
  if (!part.payloads.empty() && part.payloads.size() != payloadSlots(part))
    throw std::logic_error("encodeExecPart: payloads must be one per request (a step's: one per sequence)");
  w.put<std::uint8_t>(part.payloads.empty() ? 0 : 1);
  for (const auto& payload : part.payloads) {
    w.put<std::uint8_t>(payload ? 1 : 0);
    if (!payload) continue;
    w.putVector(payload->prompt);
    w.put(payload->temperature);
    w.put(payload->top_p);
    w.put(payload->top_k);
    w.put(payload->seed);
    w.putVector(payload->stop_ids);
  }
  return w.take();
}

ExecPart decodeExecPart(const std::string& message) {
  Reader r(message);
  expectType(r, MsgType::kExecPart);
  ExecPart p;
  p.gpu = r.get<GpuId>();
  p.batch = r.get<BatchId>();
  p.part = r.get<int>();
  p.model = r.get<ModelId>();
  p.shard = r.get<int>();
  p.weights_offset = r.get<std::int64_t>();
  if (p.weights_offset < 0) throw WireError("message: a negative pool offset");
  for (std::uint64_t n = r.count(kRequestBytes); n > 0; --n) p.requests.push_back(getRequest(r));
  if (r.getBool()) {
    auto c = std::make_shared<StepCommand>();
    c->batch = r.get<BatchId>();
    c->step = r.get<std::int64_t>();
    c->model = r.get<ModelId>();
    c->tp = r.get<int>();
    c->pp = r.get<int>();
    c->gpus = r.getVector<GpuId>();
    c->prefill = getSequences(r);
    c->decode = getSequences(r);
    c->retired = r.getVector<RequestId>();
    p.step = std::move(c);
  }
  if (r.getBool()) {
    for (std::size_t i = 0; i < payloadSlots(p); ++i) {
      if (!r.getBool()) {
        p.payloads.push_back(nullptr);
        continue;
      }
      auto payload = std::make_shared<RequestPayload>();
      payload->prompt = r.getVector<std::int32_t>();
      payload->temperature = r.get<float>();
      payload->top_p = r.get<float>();
      payload->top_k = r.get<int>();
      payload->seed = r.get<std::uint64_t>();
      payload->stop_ids = r.getVector<std::int32_t>();
      p.payloads.push_back(std::move(payload));
    }
  }
  r.expectDone();
  return p;
}

std::string encodeEvent(const DeviceEvent& e) {
  Writer w;
  w.put(MsgType::kEvent);
  w.put(e.kind);
  w.put(e.op);
  w.put(e.batch);
  w.put(e.path);
  w.put(e.gpu);
  w.put(e.segment);
  w.put<std::uint8_t>(e.final ? 1 : 0);
  w.put<std::uint8_t>(e.ok ? 1 : 0);
  w.putString(e.error);
  w.put(e.time);
  w.put(e.checksum);
  w.put(e.start);
  w.putVector(e.step_end);
  w.putVector(e.stopped);
  return w.take();
}

DeviceEvent decodeEvent(const std::string& message) {
  Reader r(message);
  expectType(r, MsgType::kEvent);
  DeviceEvent e;
  e.kind = r.get<DeviceEvent::Kind>();
  using Kind = DeviceEvent::Kind;
  // Only devices' own reports travel; the backend's internal events never leave rank 0.
  if (e.kind != Kind::kPathProgress && e.kind != Kind::kVerifyDone && e.kind != Kind::kExecDone &&
      e.kind != Kind::kRelocateDone)
    throw WireError("message: event kind " + std::to_string(static_cast<int>(e.kind)) + " is not a device's");
  e.op = r.get<OpId>();
  e.batch = r.get<BatchId>();
  e.path = r.get<int>();
  e.gpu = r.get<GpuId>();
  e.segment = r.get<int>();
  e.final = r.getBool();
  e.ok = r.getBool();
  e.error = r.getString();
  e.time = r.get<Nanos>();
  e.checksum = r.get<std::uint64_t>();
  e.start = r.get<Nanos>();
  e.step_end = r.getVector<Nanos>();
  e.stopped = r.getVector<RequestId>();
  r.expectDone();
  return e;
}

std::string encodeTokens(const std::vector<TokenDelivery>& tokens) {
  Writer w;
  w.put(MsgType::kTokens);
  w.put<std::uint64_t>(tokens.size());
  for (const TokenDelivery& t : tokens) {
    w.put(t.request);
    w.put(t.index);
    w.put(t.token);
    w.put<std::uint8_t>(t.stop ? 1 : 0);
    w.put(t.time);
  }
  return w.take();
}

std::vector<TokenDelivery> decodeTokens(const std::string& message) {
  Reader r(message);
  expectType(r, MsgType::kTokens);
  std::vector<TokenDelivery> out;
  for (std::uint64_t n = r.count(sizeof(RequestId) + sizeof(int) + sizeof(std::int32_t) + 1 + sizeof(Nanos)); n > 0; --n) {
    TokenDelivery t;
    t.request = r.get<RequestId>();
    t.index = r.get<int>();
    t.token = r.get<std::int32_t>();
    t.stop = r.getBool();
    t.time = r.get<Nanos>();
    if (t.index < 0) throw WireError("message: a negative token index");
    out.push_back(t);
  }
  r.expectDone();
  return out;
}

std::string encodeGroupId(const GroupId& group) {
  Writer w;
  w.put(MsgType::kGroupId);
  w.putString(group.key);
  w.putString(group.id);
  return w.take();
}

GroupId decodeGroupId(const std::string& message) {
  Reader r(message);
  expectType(r, MsgType::kGroupId);
  GroupId group;
  group.key = r.getString();
  group.id = r.getString();
  r.expectDone();
  return group;
}

std::string encodeSignal(MsgType type, std::int64_t value) {
  Writer w;
  w.put(type);
  w.put(value);
  return w.take();
}

std::int64_t decodeSignal(const std::string& message, MsgType expected) {
  Reader r(message);
  expectType(r, expected);
  const auto value = r.get<std::int64_t>();
  r.expectDone();
  return value;
}

}  // namespace computron::runtime::rank
