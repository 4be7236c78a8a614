// Work list of the fused prefill attention kernel (kernels::prefillAttention), built on the host
// and uploaded with the pass. Plain C++ so the rule is tested without a GPU.
#pragma once

namespace computron::model::kernels {

// Query rows per tile: a block of the kernel takes one tile of one sequence for one head.
constexpr int kPrefillAttentionTile = 64;

// Most tiles a pass of `max_tokens` tokens over `max_sequences` sequences can need: each
// sequence's last tile may be partial.
constexpr int prefillAttentionMaxTiles(int max_tokens, int max_sequences) {
  return max_tokens / kPrefillAttentionTile + max_sequences;
}

// Writes one tile per kPrefillAttentionTile query rows of each sequence, as 4 ints {first token
// of the sequence in the pass, its length, its cache slot, the tile's first row}, into `tiles`
// and returns how many. A tile's work grows with its first row (it attends over every earlier
// key), so tiles are ordered by first row, deepest first, and stably (sequence order among
// equals): short tiles then fill the GPU's last wave instead of one long tile running alone.
// Sequences of length 0 give no tile.
int prefillAttentionTiles(const int* seq_begin, const int* seq_len, const int* seq_slot, int sequences, int* tiles);

}  // namespace computron::model::kernels
