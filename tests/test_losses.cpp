// Every registered loss (core/losses.hpp) against finite differences of its
// own value: the error row is ∂ℓ/∂z and the Hessian row is ∂δ/∂z. Plus the
// registry's names and BCE's behaviour far from zero.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gradnoise/error.hpp"
#include "gradnoise/loss.hpp"
#include "losses.hpp"

namespace gradnoise {
namespace {

/// Outputs z ~ N(0, 2²) and a target of the loss's kind for K outputs.
struct Row {
  std::vector<double> z, y;
  std::int32_t label = 0;
};

Row random_row(Loss loss, std::int64_t k, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 2.0);
  Row row;
  for (std::int64_t c = 0; c < k; ++c) row.z.push_back(normal(rng));
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (std::int64_t c = 0; c < k; ++c) {
    row.y.push_back(loss == Loss::squared ? normal(rng) : uniform(rng));
  }
  row.label = static_cast<std::int32_t>(seed % static_cast<unsigned>(k));
  return row;
}

TEST(Losses, ErrorAndHessianRowsAreDerivativesOfTheValue) {
  constexpr std::int64_t k = 5;
  constexpr double h = 1e-5;
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_name(loss));
    losses::visit_loss(loss, [&](auto l) {
      using L = decltype(l);
      for (unsigned seed = 1; seed <= 4; ++seed) {
        Row row = random_row(loss, k, seed);
        std::vector<double> delta(k), scratch(k), state(k), column(k), hessian_col(k);
        L::error_row(row.z.data(), row.y.data(), row.label, k, delta.data());
        L::hessian_state(row.z.data(), k, state.data());
        for (std::int64_t c = 0; c < k; ++c) {
          const double saved = row.z[c];
          row.z[c] = saved + h;
          std::vector<double> delta_up(k), delta_down(k);
          const double up = L::error_row(row.z.data(), row.y.data(), row.label, k, delta_up.data());
          row.z[c] = saved - h;
          const double down = L::error_row(row.z.data(), row.y.data(), row.label, k, delta_down.data());
          row.z[c] = saved;
          EXPECT_NEAR(delta[c], (up - down) / (2 * h), 1e-7) << "output " << c;
          // Column c of H_ℓ, by the Hessian row on the unit vector e_c.
          std::fill(column.begin(), column.end(), 0.0);
          column[c] = 1.0;
          L::hessian_row(state.data(), column.data(), k, hessian_col.data());
          for (std::int64_t r = 0; r < k; ++r) {
            EXPECT_NEAR(hessian_col[r], (delta_up[r] - delta_down[r]) / (2 * h), 1e-7)
                << "H[" << r << "][" << c << "]";
          }
        }
        // ⟨H_ℓ, Q⟩ = Σ_c (H_ℓ Q e_c)_c for a symmetric Q.
        std::vector<double> q(k * k);
        for (std::int64_t r = 0; r < k; ++r) {
          for (std::int64_t c = 0; c <= r; ++c) q[r * k + c] = q[c * k + r] = 0.1 * (r + 1) - 0.3 * c;
        }
        double inner = 0;
        for (std::int64_t c = 0; c < k; ++c) {
          for (std::int64_t r = 0; r < k; ++r) column[r] = q[r * k + c];
          L::hessian_row(state.data(), column.data(), k, hessian_col.data());
          inner += hessian_col[c];
        }
        EXPECT_NEAR(L::hessian_inner(state.data(), q.data(), k), inner, 1e-12);
      }
    });
  }
}

TEST(Losses, NamesParseBackAndUnknownNamesListTheValidOnes) {
  for (const Loss loss : all_losses()) EXPECT_EQ(parse_loss(loss_name(loss)), loss);
  EXPECT_EQ(loss_name(Loss::binary_cross_entropy), "bce");
  EXPECT_EQ(loss_targets(Loss::binary_cross_entropy), TargetKind::real);
  EXPECT_EQ(loss_targets(Loss::cross_entropy), TargetKind::labels);
  try {
    parse_loss("hinge");
    FAIL() << "an unknown loss must be rejected";
  } catch (const InputError& e) {
    const std::string message = e.what();
    for (const Loss loss : all_losses()) {
      EXPECT_NE(message.find(loss_name(loss)), std::string::npos) << message;
    }
  }
}

// softplus(z) − yz at |z| = 1000, where the naive log(1 + e^z) overflows:
// the loss is exact (z for y = 0 and z > 0, |z| for y = 1 and z < 0) and the
// error row is σ(z) − y ∈ {−1, 0, 1}.
TEST(Losses, BinaryCrossEntropyIsFiniteFarFromZero) {
  using L = losses::BinaryCrossEntropy;
  const double z[2] = {1000.0, -1000.0}, y[2] = {0.0, 1.0};
  double delta[2];
  EXPECT_DOUBLE_EQ(L::error_row(z, y, 0, 2, delta), 2000.0);
  EXPECT_DOUBLE_EQ(delta[0], 1.0);
  EXPECT_DOUBLE_EQ(delta[1], -1.0);
  const double y_bad[2] = {0.5, 1.5}, y_nan[2] = {NAN, 0.0};
  EXPECT_FALSE(L::target_ok(y_bad, 0, 2));
  EXPECT_FALSE(L::target_ok(y_nan, 0, 2));
  EXPECT_TRUE(L::target_ok(y, 0, 2));
}

}  // namespace
}  // namespace gradnoise
