// The messages between ranks (runtime/mpi/messages.*) on arbitrary bytes: a message from another
// rank decodes to its fields or is refused with WireError (rank 0 then treats that rank as
// lost); nothing else may escape, and nothing is read past the message.
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/mpi/messages.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron::runtime::rank;
  const std::string message(reinterpret_cast<const char*>(data), size);
  try {
    switch (peekType(message)) {
      case MsgType::kHello: {
        const Hello h = decodeHello(message);
        if (encodeHello(h) != message) __builtin_trap();  // decoding is exact: it encodes back
        break;
      }
      case MsgType::kEvent: {
        const auto ev = decodeEvent(message);
        if (encodeEvent(ev) != message) __builtin_trap();
        break;
      }
      case MsgType::kExecPart:
        (void)decodeExecPart(message);
        break;
      case MsgType::kTokens: {
        const auto tokens = decodeTokens(message);
        if (encodeTokens(tokens) != message) __builtin_trap();
        break;
      }
      case MsgType::kGroupId: {
        const GroupId g = decodeGroupId(message);
        if (encodeGroupId(g) != message) __builtin_trap();
        break;
      }
      case MsgType::kPathJob:
      case MsgType::kVerifyJob:
      case MsgType::kExecJob:
      case MsgType::kRelocateJob:
        (void)decodeJob(message);
        break;
      default:
        (void)decodeSignal(message, peekType(message));
    }
  } catch (const computron::runtime::wire::WireError&) {
  }
  return 0;
}
