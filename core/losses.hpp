// The registry of losses: each loss lives in one header of core/losses/ (value,
// output error row, the loss Hessian's rows, target validation, its name), and
// this list is the one line that makes every engine and the CLI know it.
// visit_loss turns the runtime Loss into the loss's type, so kernels and
// loops are compiled once per loss with no branch per row.
#pragma once

#include "host_device.hpp"
#include "losses/binary_cross_entropy.hpp"
#include "losses/softmax_cross_entropy.hpp"
#include "losses/squared.hpp"

namespace gradnoise::losses {

template <class... L>
struct List {};

/// Every loss gradnoise knows, in the order of the Loss enum.
using All = List<Squared, SoftmaxCrossEntropy, BinaryCrossEntropy>;

namespace detail {
template <class... L>
constexpr bool in_enum_order(List<L...>) {
  int index = 0;
  return ((static_cast<int>(L::id) == index++) && ...);
}
}  // namespace detail
// visit_loss maps the last id to the last type without comparing, so the
// list must be the enum, in order.
static_assert(detail::in_enum_order(All{}), "losses::All must list every Loss in enum order");

namespace detail {
GN_EXEC_CHECK_DISABLE
template <class F, class First, class... Rest>
GN_HOST_DEVICE decltype(auto) visit(Loss loss, F&& f, List<First, Rest...>) {
  if constexpr (sizeof...(Rest) == 0) {
    return f(First{});  // callers pass a valid Loss, so the last one is it
  } else {
    if (loss == First::id) return f(First{});
    return visit(loss, static_cast<F&&>(f), List<Rest...>{});
  }
}
template <class F, class... L>
void for_each(F&& f, List<L...>) {
  (f(L{}), ...);
}
}  // namespace detail

/// f(L{}) for the loss type L whose id is `loss`.
GN_EXEC_CHECK_DISABLE
template <class F>
GN_HOST_DEVICE decltype(auto) visit_loss(Loss loss, F&& f) {
  return detail::visit(loss, static_cast<F&&>(f), All{});
}

/// f(L{}) for every registered loss, in order.
template <class F>
void for_each_loss(F&& f) {
  detail::for_each(static_cast<F&&>(f), All{});
}

}  // namespace gradnoise::losses
