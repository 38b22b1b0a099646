// The public face of the loss registry (core/losses.hpp): names, parsing and
// target kinds come from the loss types themselves, so a new loss needs no
// edit here.
#include "gradnoise/loss.hpp"

#include "gradnoise/error.hpp"
#include "losses.hpp"

namespace gradnoise {

std::vector<Loss> all_losses() {
  std::vector<Loss> out;
  losses::for_each_loss([&](auto l) { out.push_back(decltype(l)::id); });
  return out;
}

std::string loss_name(Loss loss) {
  return losses::visit_loss(loss, [](auto l) { return std::string(decltype(l)::name); });
}

std::string loss_summary(Loss loss) {
  return losses::visit_loss(loss, [](auto l) { return std::string(decltype(l)::summary); });
}

TargetKind loss_targets(Loss loss) {
  return losses::visit_loss(loss, [](auto l) { return decltype(l)::targets; });
}

std::string loss_expected_targets(Loss loss) {
  return losses::visit_loss(loss, [](auto l) { return std::string(decltype(l)::expected_targets); });
}

Loss parse_loss(std::string_view name) {
  std::string names;
  for (Loss loss : all_losses()) {
    if (name == loss_name(loss)) return loss;
    names += (names.empty() ? "" : ", ") + loss_name(loss) + " (" + loss_summary(loss) + ")";
  }
  throw InputError("--loss must be one of " + names + ", not '" + std::string(name) + "'");
}

}  // namespace gradnoise
