#include "runtime/model/prefill_tiles.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

namespace computron::model::kernels {

int prefillAttentionTiles(const int* seq_begin, const int* seq_len, const int* seq_slot, int sequences, int* tiles) {
  std::vector<std::array<int, 4>> list;
  for (int s = 0; s < sequences; ++s)
    for (int q0 = 0; q0 < seq_len[s]; q0 += kPrefillAttentionTile) list.push_back({seq_begin[s], seq_len[s], seq_slot[s], q0});
  std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a[3] > b[3]; });
  for (std::size_t i = 0; i < list.size(); ++i) std::memcpy(tiles + 4 * i, list[i].data(), sizeof(int) * 4);
  return static_cast<int>(list.size());
}

}  // namespace computron::model::kernels
