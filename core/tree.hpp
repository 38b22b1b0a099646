// The fixed binary tree every reduction over ranks follows (docs/MPI.md):
// at step s = 1, 2, 4, …, part r (a multiple of 2s) absorbs part r + s, the
// lower part on the left. The host path (Communicator::reduce over MPI or
// thread mailboxes), the GPU path (NCCL send/receive, kernels/nccl_sum.cu)
// and the tests' one-process folds all walk this one schedule, so for a
// fixed rank count they combine the same operands in the same order and give
// the same bits.
#pragma once

namespace gradnoise::detail {

/// merge(left, right) for every merge of the tree over `ranks` parts, in order.
template <class Merge>
void for_each_tree_merge(int ranks, Merge&& merge) {
  for (int step = 1; step < ranks; step *= 2) {
    for (int left = 0; left + step < ranks; left += 2 * step) merge(left, left + step);
  }
}

/// Rank `me`'s share of the tree: absorb(from) for each part it absorbs, in
/// order, then hand_over(to) once unless it is rank 0 (which ends with the
/// whole). absorb and hand_over are the transport's receive-and-combine and send.
template <class Absorb, class HandOver>
void walk_tree(int me, int ranks, Absorb&& absorb, HandOver&& hand_over) {
  bool handed_over = false;
  for_each_tree_merge(ranks, [&](int left, int right) {
    if (handed_over) return;
    if (left == me) absorb(right);
    if (right == me) {
      hand_over(left);
      handed_over = true;
    }
  });
}

}  // namespace gradnoise::detail
