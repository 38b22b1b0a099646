// The losses, by name (docs/MATH.md "Data and models"). Each loss's
// arithmetic has one home in core/losses/; this header is what a library user
// and the CLI need: the enum, its names and the targets each loss takes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace gradnoise {

/// squared: ½‖f(x) − y‖² ("mse"); cross_entropy: softmax cross-entropy on
/// class labels ("ce"); binary_cross_entropy: Σ_k softplus(z_k) − y_k z_k on
/// targets in [0, 1], multi-label ("bce").
enum class Loss { squared, cross_entropy, binary_cross_entropy };

/// What kind of targets a data source carries.
enum class TargetKind { real, labels };

/// Every loss, in enum order.
std::vector<Loss> all_losses();

/// "mse", "ce", "bce": the CLI's and the reports' names.
std::string loss_name(Loss loss);

/// "squared error", "softmax cross-entropy", ...
std::string loss_summary(Loss loss);

/// Parses a loss name; throws InputError naming every valid one otherwise.
Loss parse_loss(std::string_view name);

/// The targets the loss needs: real N×K values or N class labels.
TargetKind loss_targets(Loss loss);

/// "integer class labels in [0, K)", "real targets in [0, 1]", ...
std::string loss_expected_targets(Loss loss);

}  // namespace gradnoise
