// The sweep engine on the CPU: every run's SGD steps in float64 with a fixed
// order of operations, runs spread over threads, the noise profiled at logged
// steps by the exact engine, and the state serialisable for resumes.
//
// Arithmetic order (what makes a run reproducible bit for bit, and what the
// plain reference loop in tests/test_sweep.cpp follows): for each sample the
// layer output is z_o = Σ_j W_oj a_j summed over j ascending from 0, then
// + b_o; the backward pass δ_{l−1,j} = Σ_o W_oj δ_{l,o} over o ascending; the
// gradient sums Σ_i δ_{l,i} a_{l−1,i}ᵀ over the batch in draw order, and is
// divided by b. The loops vectorise across samples (activations are stored
// feature major) or across features (gradient rows), never across the terms
// of one sum, so vectorisation does not reorder anything; the file is built
// with -ffp-contract=off so no multiply-add is fused either.
//
// With SweepConfig::device cuda (or automatic and a GPU) the steps between
// logged steps run instead on the GPU sweep engine (kernels/sweep_cuda.cu, one
// thread per run, the same order per sample: core/sweep_step.hpp); the
// logging below (minibatch gradients at logged steps, profiles, losses,
// replica statistics) stays here.
#include "gradnoise/sweep.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "backend.hpp"
#include "blas_threads.hpp"
#include "losses.hpp"
#include "random.hpp"

namespace gradnoise {

std::string sampling_name(Sampling sampling) {
  switch (sampling) {
    case Sampling::with_replacement: return "with";
    case Sampling::without_replacement: return "without";
    case Sampling::fixed: return "fixed";
  }
  return "?";
}

std::optional<Sampling> sampling_named(std::string_view name) {
  for (const Sampling s : {Sampling::with_replacement, Sampling::without_replacement, Sampling::fixed}) {
    if (name == sampling_name(s)) return s;
  }
  return std::nullopt;
}

namespace {

using nlohmann::json;

// The sweep's random streams (minibatch rows, epoch permutations, label
// noise) are core/random.hpp's, the same functions the GPU engine runs.
using detail::replacement_row;
using detail::reshuffled_batch;

/// Standard normals for `count` = b·K label-noise draws of one step.
void label_noise_normals(std::uint64_t seed, std::uint32_t replica, std::uint32_t step,
                         double* out, std::int64_t count) {
  detail::LabelNoise noise;
  for (std::int64_t m = 0; m < count; ++m) out[m] = noise.get(seed, replica, step, m);
}

// ---- The model's arithmetic on a block of samples ---------------------------

struct LayerShape {
  std::int64_t in = 0, out = 0, offset = 0;  // offset of W in θ; b follows W
  bool bias = false;
};

std::vector<LayerShape> layer_shapes(const Model& model) {
  std::vector<LayerShape> shapes;
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[static_cast<std::size_t>(l)];
    shapes.push_back({layer.in, layer.out, model.param_offset(l), layer.has_bias()});
  }
  return shapes;
}

/// Samples go through the model kBlockRows at a time: feature-major buffers
/// of a block stay in L1/L2, and a long batch is several blocks whose
/// gradients add up in draw order (the same sums as one block). Rows of a
/// feature-major buffer are kLd apart, padded so that they do not all map to
/// the same cache sets.
constexpr std::int64_t kBlockRows = 128;
constexpr std::int64_t kLd = kBlockRows + 8;

/// Buffers for one block of samples and one batch's draws; one per thread.
struct Scratch {
  std::vector<std::vector<double>> acts;    // acts[l]: in_l × kLd (feature major); acts[L]: K × kLd
  std::vector<std::vector<double>> errors;  // errors[l]: out_l × kLd
  std::vector<double> rows_major;  // kBlockRows × max width: a layer's inputs sample major
  std::vector<double> x_rows;      // kBlockRows × D, gathered
  std::vector<double> targets;     // kBlockRows × K (squared loss)
  std::vector<std::int32_t> labels;
  std::vector<double> losses;      // kBlockRows
  std::vector<double> grad;        // P
  std::vector<std::int32_t> indices;  // the batch's rows, in draw order (largest batch)
  std::vector<double> noise;          // the batch's label noise, batch × K

  Scratch(const std::vector<LayerShape>& shapes, std::int64_t max_batch, std::int64_t num_params) {
    std::int64_t widest = 0;
    for (const LayerShape& shape : shapes) {
      acts.emplace_back(static_cast<std::size_t>(shape.in * kLd));
      errors.emplace_back(static_cast<std::size_t>(shape.out * kLd));
      widest = std::max({widest, shape.in, shape.out});
    }
    const std::int64_t d = shapes.front().in, k = shapes.back().out;
    acts.emplace_back(static_cast<std::size_t>(k * kLd));
    rows_major.resize(static_cast<std::size_t>(widest * kBlockRows));
    x_rows.resize(static_cast<std::size_t>(d * kBlockRows));
    targets.resize(static_cast<std::size_t>(k * kBlockRows));
    labels.resize(static_cast<std::size_t>(kBlockRows));
    losses.resize(static_cast<std::size_t>(kBlockRows));
    grad.resize(static_cast<std::size_t>(num_params));
    indices.resize(static_cast<std::size_t>(max_batch));
    noise.resize(static_cast<std::size_t>(k * max_batch));
  }
};

// The loops below run on every step of every run. Each is compiled twice,
// for AVX2 and for baseline x86-64, and picked at load time; both do the
// same IEEE operations lane by lane (no reduction is vectorised and no
// multiply-add is fused), so the bits do not depend on the machine.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GN_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GN_VECTOR_CLONES
#endif

/// out[r] = Σ_c M(r, c) in[c] for `m` samples stored feature major (rows kLd
/// apart), with M(r, c) = w[r·row_stride + c·col_stride]: W for the forward
/// pass, Wᵀ for the backward one. Each sum runs over c ascending from 0 and
/// the loop vectorises across the samples.
GN_VECTOR_CLONES
void feature_major_product(const double* w, std::int64_t row_stride, std::int64_t col_stride,
                           std::int64_t rows, std::int64_t cols, const double* in, double* out,
                           std::int64_t m) {
  for (std::int64_t r = 0; r < rows; ++r) {
    double* out_r = out + r * kLd;
    std::fill(out_r, out_r + m, 0.0);
    for (std::int64_t c = 0; c < cols; ++c) {
      const double weight = w[r * row_stride + c * col_stride];
      const double* in_c = in + c * kLd;
      for (std::int64_t i = 0; i < m; ++i) out_r[i] += weight * in_c[i];
    }
  }
}

/// dst (cols × kLd, feature major) = the transpose of src (m × cols, sample major).
GN_VECTOR_CLONES
void to_feature_major(const double* src, std::int64_t m, std::int64_t cols, double* dst) {
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) dst[j * kLd + i] = src[i * cols + j];
  }
}

/// dst (m × cols, sample major) = the transpose of src (cols × kLd).
GN_VECTOR_CLONES
void to_sample_major(const double* src, std::int64_t m, std::int64_t cols, double* dst) {
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) dst[i * cols + j] = src[j * kLd + i];
  }
}

/// gw[o, :] += δ[o][i] · a_i and gb[o] += δ[o][i] for i = 0..m−1 in order.
GN_VECTOR_CLONES
void accumulate_outer(const double* delta, const double* inputs, std::int64_t m, std::int64_t out,
                      std::int64_t in, bool bias, double* gw, double* gb) {
  for (std::int64_t i = 0; i < m; ++i) {
    const double* ai = inputs + i * in;
    for (std::int64_t o = 0; o < out; ++o) {
      const double d = delta[o * kLd + i];
      double* row = gw + o * in;
      for (std::int64_t j = 0; j < in; ++j) row[j] += d * ai[j];
      if (bias) gb[o] += d;
    }
  }
}

/// Forward pass of `m` ≤ kBlockRows samples whose inputs are in
/// scratch.x_rows (m × D): fills acts (feature major) and the outputs acts[L].
void forward(const std::vector<LayerShape>& shapes, const double* theta, std::int64_t m,
             Scratch& s) {
  to_feature_major(s.x_rows.data(), m, shapes.front().in, s.acts[0].data());
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    const LayerShape& shape = shapes[l];
    const double* w = theta + shape.offset;
    double* z = s.acts[l + 1].data();
    feature_major_product(w, shape.in, 1, shape.out, shape.in, s.acts[l].data(), z, m);
    if (!shape.bias) continue;
    for (std::int64_t o = 0; o < shape.out; ++o) {
      const double bias = w[shape.out * shape.in + o];
      for (std::int64_t i = 0; i < m; ++i) z[o * kLd + i] += bias;
    }
  }
}

/// Output errors δ_L (errors.back()) and per-sample losses of `m` samples
/// after forward(), against scratch.targets (m × K, real targets) or
/// scratch.labels: the loss's own error row on feature-major columns.
void output_errors(const std::vector<LayerShape>& shapes, Loss loss, std::int64_t m, Scratch& s) {
  const std::int64_t k = shapes.back().out;
  const double* z = s.acts.back().data();
  double* delta = s.errors.back().data();
  losses::visit_loss(loss, [&](auto l) {
    for (std::int64_t i = 0; i < m; ++i) {
      s.losses[static_cast<std::size_t>(i)] = decltype(l)::error_row(
          Strided<const double>{z + i, kLd}, s.targets.data() + i * k,
          s.labels[static_cast<std::size_t>(i)], k, Strided<double>{delta + i, kLd});
    }
  });
}

/// Backward pass of `m` samples after output_errors(), adding their summed
/// gradient Σ_i g_i to scratch.grad (which the caller zeroes once per batch).
void backward(const std::vector<LayerShape>& shapes, const double* theta, std::int64_t m,
              Scratch& s) {
  for (std::size_t l = shapes.size(); l-- > 0;) {
    const LayerShape& shape = shapes[l];
    const double* w = theta + shape.offset;
    const double* delta = s.errors[l].data();
    // The layer's inputs sample major, so each gradient row is one
    // contiguous multiply-add per sample.
    const double* inputs = s.x_rows.data();
    if (l > 0) {
      to_sample_major(s.acts[l].data(), m, shape.in, s.rows_major.data());
      inputs = s.rows_major.data();
    }
    double* gw = s.grad.data() + shape.offset;
    accumulate_outer(delta, inputs, m, shape.out, shape.in, shape.bias, gw, gw + shape.out * shape.in);
    if (l > 0) {
      feature_major_product(w, 1, shape.in, shape.in, shape.out, delta, s.errors[l - 1].data(), m);
    }
  }
}

/// 64-bit FNV-1a over bytes, to tell whether a checkpoint belongs to a sweep.
std::uint64_t fnv1a(std::uint64_t hash, const void* bytes, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  for (std::size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 0x100000001b3ULL;
  return hash;
}

template <class T>
std::uint64_t fnv1a(std::uint64_t hash, const std::vector<T>& values) {
  return fnv1a(hash, values.data(), values.size() * sizeof(T));
}

std::string hex(std::uint64_t value) {
  static const char digits[] = "0123456789abcdef";
  std::string text(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) text[static_cast<std::size_t>(i)] = digits[value & 15];
  return text;
}

json optional_json(const std::optional<double>& value) {
  return value ? json(*value) : json(nullptr);
}

std::optional<double> optional_from(const json& value) {
  if (value.is_null()) return std::nullopt;
  return value.get<double>();
}

json binary_doubles(const std::vector<double>& values) {
  std::vector<std::uint8_t> bytes(values.size() * sizeof(double));
  // Without momentum the velocity is empty and its data() may be null, which
  // memcpy must not be given even for zero bytes.
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return json::binary(std::move(bytes));
}

std::vector<double> doubles_from(const json& value, std::size_t expected, const char* what) {
  const auto& bytes = value.get_binary();
  if (bytes.size() != expected * sizeof(double)) {
    throw InputError(std::string("the checkpoint's ") + what + " has the wrong size.");
  }
  std::vector<double> values(expected);
  // As in binary_doubles: an empty velocity (no momentum) has null data().
  if (expected > 0) std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

/// Sample mean and standard deviation (divisor count − 1).
std::pair<std::optional<double>, std::optional<double>> mean_std(const std::vector<double>& values) {
  if (values.empty()) return {};
  double mean = 0;
  for (double v : values) mean += v;
  mean /= static_cast<double>(values.size());
  if (values.size() < 2) return {mean, std::nullopt};
  double ss = 0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return {mean, std::sqrt(ss / static_cast<double>(values.size() - 1))};
}

}  // namespace

// ---- The sweep's state -----------------------------------------------------------

/// Where and why a run diverged; step < 0 while it has not.
struct Verdict {
  std::int64_t step = -1;
  std::string why;
  bool bad() const { return step >= 0; }
};

struct Sweep::State {
  Model model;  // the starting model; its weights are overwritten for profiles
  const Dataset& train;
  const Dataset* test;
  SweepConfig config;
  std::vector<LayerShape> shapes;
  std::int64_t num_params = 0;
  std::int64_t num_runs = 0;
  std::vector<std::int64_t> log_steps;
  std::int64_t logs_done = 0;
  double loss_floor = 0;         // K σ²/2, added to every logged training loss
  double divergence_limit = 0;   // losses above it mean divergence
  std::uint64_t fingerprint = 0;
  int threads = 1;
  std::int64_t max_batch = 0;    // the largest batch size (scratch for its draws)

  std::vector<double> theta0;
  std::vector<double> theta;     // runs × P
  std::vector<double> velocity;  // runs × P when momentum > 0
  std::vector<double> grads;     // runs × P: minibatch gradient at the last logged step
  std::vector<std::uint8_t> diverged;
  std::vector<Divergence> divergences;  // in the order found; sorted by run on output
  std::vector<std::unique_ptr<Scratch>> scratch;  // per thread
  SweepCudaStatePtr cuda;  // the GPU sweep engine when the steps run there
  std::string device = "cpu";

  std::vector<SweepRow> rows;
  std::vector<std::vector<ReplicaStats>> trajectories;  // per grid point
  double elapsed_s = 0;
  std::int64_t run_steps = 0;

  State(const Model& initial, const Dataset& train_data, const Dataset* test_data,
        SweepConfig sweep_config)
      : model(initial), train(train_data), test(test_data), config(std::move(sweep_config)) {}

  std::int64_t grid_points() const {
    return static_cast<std::int64_t>(config.batch_sizes.size() * config.lrs.size());
  }
  std::int64_t grid_of(std::int64_t run) const { return run / config.replicas; }
  std::int64_t batch_size_of(std::int64_t run) const {
    return config.batch_sizes[static_cast<std::size_t>(grid_of(run) / static_cast<std::int64_t>(config.lrs.size()))];
  }
  double lr_of(std::int64_t run) const {
    return config.lrs[static_cast<std::size_t>(grid_of(run) % static_cast<std::int64_t>(config.lrs.size()))];
  }
  std::int64_t replica_of(std::int64_t run) const {
    return config.first_replica + run % config.replicas;
  }
  double* theta_of(std::int64_t run) { return theta.data() + run * num_params; }

  /// Draws batch `step` of `run` into scratch.indices and, with label noise,
  /// its b·K standard normals into scratch.noise.
  void draw_batch(std::int64_t run, std::int64_t step, Scratch& s) {
    const std::int64_t b = batch_size_of(run);
    const std::int64_t n = train.n;
    const auto replica = static_cast<std::uint32_t>(replica_of(run));
    switch (config.sampling) {
      case Sampling::with_replacement:
        for (std::int64_t slot = 0; slot < b; ++slot) {
          s.indices[static_cast<std::size_t>(slot)] =
              static_cast<std::int32_t>(replacement_row(config.seed, replica, step, slot, n));
        }
        break;
      case Sampling::without_replacement: {
        const detail::ReshuffledBatch batch = reshuffled_batch(config.seed, replica, step, b, n);
        for (std::int64_t slot = 0; slot < b; ++slot) {
          s.indices[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(batch.row(slot));
        }
        break;
      }
      case Sampling::fixed:
        for (std::int64_t slot = 0; slot < b; ++slot) {
          s.indices[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>((step * b + slot) % n);
        }
        break;
    }
    if (config.label_noise > 0) {
      label_noise_normals(config.seed, replica, static_cast<std::uint32_t>(step), s.noise.data(),
                          b * train.k);
    }
  }

  /// Copies the drawn rows [first, first + m) of the batch and their targets
  /// (plus label noise) or labels into the block buffers.
  void gather_block(std::int64_t first, std::int64_t m, Scratch& s) const {
    const std::int64_t d = train.d, k = train.k;
    for (std::int64_t slot = 0; slot < m; ++slot) {
      const std::int64_t row = s.indices[static_cast<std::size_t>(first + slot)];
      std::copy_n(train.x.begin() + row * d, d, s.x_rows.begin() + slot * d);
      if (loss_targets(config.loss) == TargetKind::real) {
        std::copy_n(train.y.begin() + row * k, k, s.targets.begin() + slot * k);
      } else {
        s.labels[static_cast<std::size_t>(slot)] = train.labels[static_cast<std::size_t>(row)];
      }
    }
    if (config.label_noise > 0) {
      for (std::int64_t index = 0; index < m * k; ++index) {
        s.targets[static_cast<std::size_t>(index)] +=
            config.label_noise * s.noise[static_cast<std::size_t>(first * k + index)];
      }
    }
  }

  /// The minibatch gradient of batch `step` at the run's θ into scratch.grad
  /// (mean over the batch, without weight decay); returns the minibatch loss.
  double minibatch_gradient(std::int64_t run, std::int64_t step, Scratch& s) {
    const std::int64_t b = batch_size_of(run);
    draw_batch(run, step, s);
    const double* w = theta_of(run);
    std::fill(s.grad.begin(), s.grad.end(), 0.0);
    double loss = 0;
    for (std::int64_t first = 0; first < b; first += kBlockRows) {
      const std::int64_t m = std::min(kBlockRows, b - first);
      gather_block(first, m, s);
      forward(shapes, w, m, s);
      output_errors(shapes, config.loss, m, s);
      backward(shapes, w, m, s);
      for (std::int64_t i = 0; i < m; ++i) loss += s.losses[static_cast<std::size_t>(i)];
    }
    for (double& g : s.grad) g /= static_cast<double>(b);
    return loss / static_cast<double>(b);
  }

  /// Why a loss means divergence, or empty.
  std::string divergence_reason(const char* what, double loss) const {
    if (!std::isfinite(loss)) return std::string(what) + " is not finite";
    if (loss > divergence_limit) {
      return std::string(what) + " " + std::to_string(loss) + " exceeds " +
             std::to_string(config.divergence_factor) + " times the starting loss";
    }
    return {};
  }

  void mark_diverged(std::int64_t run, std::int64_t step, std::string reason) {
    diverged[static_cast<std::size_t>(run)] = 1;
    divergences.push_back({run, step, std::move(reason)});
  }

  /// Steps [from, to) of one run; stops it at the first sign of divergence.
  /// Returns the steps taken and, if it diverged, where and why.
  std::pair<std::int64_t, Verdict> advance_run(std::int64_t run, std::int64_t from,
                                                   std::int64_t to, Scratch& s) {
    double* w = theta_of(run);
    double* v = velocity.empty() ? nullptr : velocity.data() + run * num_params;
    const double lr = lr_of(run), decay = config.weight_decay, momentum = config.momentum;
    for (std::int64_t step = from; step < to; ++step) {
      const double loss = minibatch_gradient(run, step, s);
      std::string reason = divergence_reason("the minibatch loss", loss);
      if (!reason.empty()) return {step - from, {step, std::move(reason)}};
      double* g = s.grad.data();
      if (decay != 0) {
        for (std::int64_t p = 0; p < num_params; ++p) g[p] += decay * w[p];
      }
      double norm_sq = 0;
      if (v != nullptr) {
        for (std::int64_t p = 0; p < num_params; ++p) {
          v[p] = momentum * v[p] + g[p];
          w[p] -= lr * v[p];
          norm_sq += w[p] * w[p];
        }
      } else {
        for (std::int64_t p = 0; p < num_params; ++p) {
          w[p] -= lr * g[p];
          norm_sq += w[p] * w[p];
        }
      }
      if (!std::isfinite(norm_sq)) {
        return {step + 1 - from, {step, "the weights are no longer finite"}};
      }
    }
    return {to - from, {}};
  }

  /// Mean loss and accuracy (labels only) of θ on `data`, in blocks of rows.
  std::pair<double, std::optional<double>> evaluate(const double* w, const Dataset& data,
                                                    Scratch& s) const {
    const std::int64_t d = data.d, k = data.k;
    double total = 0;
    std::int64_t correct = 0;
    for (std::int64_t first = 0; first < data.n; first += kBlockRows) {
      const std::int64_t m = std::min(kBlockRows, data.n - first);
      std::copy_n(data.x.begin() + first * d, m * d, s.x_rows.begin());
      if (loss_targets(config.loss) == TargetKind::real) {
        std::copy_n(data.y.begin() + first * k, m * k, s.targets.begin());
      } else {
        std::copy_n(data.labels.begin() + first, m, s.labels.begin());
      }
      forward(shapes, w, m, s);
      output_errors(shapes, config.loss, m, s);
      const double* z = s.acts.back().data();
      for (std::int64_t i = 0; i < m; ++i) {
        total += s.losses[static_cast<std::size_t>(i)];
        if (loss_targets(config.loss) == TargetKind::labels) {
          std::int64_t best = 0;
          for (std::int64_t o = 1; o < k; ++o) {
            if (z[o * kLd + i] > z[best * kLd + i]) best = o;
          }
          correct += best == s.labels[static_cast<std::size_t>(i)];
        }
      }
    }
    const auto n = static_cast<double>(data.n);
    if (loss_targets(config.loss) == TargetKind::labels) {
      return {total / n, static_cast<double>(correct) / n};
    }
    return {total / n, std::nullopt};
  }
};

// ---- Construction and checks ------------------------------------------------------

Sweep::Sweep(const Model& initial, const Dataset& train, const Dataset* test, SweepConfig config)
    : state_(std::make_unique<State>(initial, train, test, std::move(config))) {
  State& s = *state_;
  const SweepConfig& c = s.config;
  ProfileOptions options;
  options.loss = c.loss;
  check_profile_inputs(initial, train, options);
  if (test != nullptr) {
    if (test->n < 1) throw InputError("the test data hold no samples.");
    check_profile_inputs(initial, *test, options);
  }
  if (c.batch_sizes.empty()) throw InputError("--batch-sizes needs at least one batch size.");
  if (c.lrs.empty()) throw InputError("--lrs needs at least one learning rate.");
  for (std::int64_t b : c.batch_sizes) {
    if (b < 1 || b > train.n) {
      throw InputError("--batch-sizes: batch size " + std::to_string(b) + " is outside 1.." +
                       std::to_string(train.n) + " (the number of training samples).");
    }
  }
  for (double lr : c.lrs) {
    if (!(lr > 0) || !std::isfinite(lr)) {
      throw InputError("--lrs: learning rate " + std::to_string(lr) +
                       " must be a positive finite number.");
    }
  }
  if (c.replicas < 1) throw InputError("--replicas must be at least 1.");
  if (c.first_replica < 0 || c.first_replica + c.replicas > (std::int64_t{1} << 32)) {
    throw InputError("--first-replica plus --replicas must stay below 2^32.");
  }
  if (c.steps < 1 || c.steps >= (std::int64_t{1} << 32)) {
    throw InputError("--steps must be at least 1 (and below 2^32).");
  }
  if (c.log_every < 1) throw InputError("--log-every must be at least 1 step.");
  if (!(c.label_noise >= 0) || !std::isfinite(c.label_noise)) {
    throw InputError("--label-noise must be a finite standard deviation ≥ 0.");
  }
  if (c.label_noise > 0 && c.loss != Loss::squared) {
    throw InputError("--label-noise adds Gaussian noise to real targets and needs --loss mse.");
  }
  if (!(c.weight_decay >= 0) || !std::isfinite(c.weight_decay)) {
    throw InputError("--weight-decay must be a finite number ≥ 0.");
  }
  if (!(c.momentum >= 0 && c.momentum < 1)) throw InputError("--momentum must lie in [0, 1).");
  if (!(c.divergence_factor > 1)) throw InputError("the divergence factor must exceed 1.");
  if (train.n >= (std::int64_t{1} << 31)) {
    throw InputError("sweeps index samples with 32 bits; use fewer than 2^31 training samples.");
  }

  s.shapes = layer_shapes(initial);
  s.num_params = initial.num_params();
  s.num_runs = s.grid_points() * c.replicas;
  for (std::int64_t step = 0; step < c.steps; step += c.log_every) s.log_steps.push_back(step);
  s.log_steps.push_back(c.steps);
  s.threads = c.threads > 0 ? c.threads : std::max(1, omp_get_max_threads());
  s.max_batch = *std::max_element(c.batch_sizes.begin(), c.batch_sizes.end());
  s.loss_floor = 0.5 * static_cast<double>(train.k) * c.label_noise * c.label_noise;

  s.theta0 = initial.flatten();
  s.theta.resize(static_cast<std::size_t>(s.num_runs * s.num_params));
  for (std::int64_t run = 0; run < s.num_runs; ++run) {
    std::copy(s.theta0.begin(), s.theta0.end(), s.theta_of(run));
  }
  if (c.momentum > 0) s.velocity.assign(s.theta.size(), 0.0);
  s.grads.assign(s.theta.size(), 0.0);
  s.diverged.assign(static_cast<std::size_t>(s.num_runs), 0);
  s.trajectories.resize(static_cast<std::size_t>(s.grid_points()));
  for (int t = 0; t < s.threads; ++t) {
    s.scratch.push_back(std::make_unique<Scratch>(s.shapes, s.max_batch, s.num_params));
  }

  // The expected loss at the start sets the divergence threshold; a start
  // with zero loss and no label noise never moves, so only non-finite values
  // count then.
  const double start_loss = s.evaluate(s.theta0.data(), train, *s.scratch[0]).first + s.loss_floor;
  s.divergence_limit = start_loss > 0 ? c.divergence_factor * start_loss
                                      : std::numeric_limits<double>::infinity();

  json identity = {{"loss", loss_name(c.loss)},
                   {"batch_sizes", c.batch_sizes},
                   {"lrs", c.lrs},
                   {"replicas", c.replicas},
                   {"first_replica", c.first_replica},
                   {"steps", c.steps},
                   {"sampling", sampling_name(c.sampling)},
                   {"label_noise", c.label_noise},
                   {"weight_decay", c.weight_decay},
                   {"momentum", c.momentum},
                   {"log_every", c.log_every},
                   {"seed", c.seed},
                   {"profile", c.profile},
                   {"divergence_factor", c.divergence_factor}};
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  const std::string text = identity.dump();
  hash = fnv1a(hash, text.data(), text.size());
  for (const Dataset* data : {&train, test}) {
    if (data == nullptr) continue;
    hash = fnv1a(hash, data->x);
    hash = fnv1a(hash, data->y);
    hash = fnv1a(hash, data->labels);
  }
  s.fingerprint = fnv1a(hash, s.theta0);
  // The device is not part of the fingerprint: a checkpoint written on one
  // resumes on the other (the same bits only where the GPU gives the CPU's).

  const bool small_model = s.num_params <= 4096 && train.d <= 4096 &&
                           initial.num_layers() <= kSweepCudaMaxLayers;
  // The one device choice (detail::resolve_device); automatic also asks
  // for a model small enough for the one-thread-per-run GPU engine.
  const bool on_gpu = (c.device != Device::automatic || small_model) &&
                      detail::resolve_device(c.device) == detail::Place::cuda;
  if (on_gpu) {
    SweepCudaSetup setup;
    setup.model = &initial;
    setup.train = &train;
    setup.config = &c;
    setup.divergence_limit = s.divergence_limit;
    for (std::int64_t run = 0; run < s.num_runs; ++run) {
      setup.batch_sizes.push_back(s.batch_size_of(run));
      setup.lrs.push_back(s.lr_of(run));
      setup.replicas.push_back(static_cast<std::uint32_t>(s.replica_of(run)));
    }
    s.cuda = sweep_cuda_create(setup);  // says clearly when there is no GPU
    s.device = "cuda: " + cuda_device_name();
  }
}

Sweep::~Sweep() = default;

std::int64_t Sweep::num_runs() const { return state_->num_runs; }
const std::vector<std::int64_t>& Sweep::log_steps() const { return state_->log_steps; }
const std::string& Sweep::device() const { return state_->device; }
std::int64_t Sweep::logs_done() const { return state_->logs_done; }
bool Sweep::done() const {
  return state_->logs_done == static_cast<std::int64_t>(state_->log_steps.size());
}

// ---- Stepping and logging ---------------------------------------------------------

void Sweep::advance() {
  State& s = *state_;
  if (done()) return;
  const auto start = std::chrono::steady_clock::now();
  const std::int64_t log_index = s.logs_done;
  const std::int64_t step = s.log_steps[static_cast<std::size_t>(log_index)];
  const SweepConfig& c = s.config;
  const std::int64_t runs = s.num_runs;

  // Every live run from the previous logged step to this one.
  std::vector<Verdict> reasons(static_cast<std::size_t>(runs));
  std::vector<std::int64_t> taken(static_cast<std::size_t>(runs), 0);
  if (log_index > 0) {
    const std::int64_t from = s.log_steps[static_cast<std::size_t>(log_index - 1)];
    if (s.cuda) {
      const std::vector<SweepRunOutcome> outcomes =
          sweep_advance_cuda(*s.cuda, s.theta, s.velocity, s.diverged, from, step);
      for (std::int64_t run = 0; run < runs; ++run) {
        const SweepRunOutcome& outcome = outcomes[static_cast<std::size_t>(run)];
        if (s.diverged[static_cast<std::size_t>(run)]) continue;
        taken[static_cast<std::size_t>(run)] = outcome.steps;
        if (outcome.diverged_step < 0) continue;
        std::string why = outcome.loss_diverged
                              ? s.divergence_reason("the minibatch loss", outcome.loss)
                              : std::string("the weights are no longer finite");
        if (why.empty()) why = "the minibatch loss exceeds the limit";  // the GPU's rounding
        reasons[static_cast<std::size_t>(run)] = {outcome.diverged_step, std::move(why)};
      }
    } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
      for (std::int64_t run = 0; run < runs; ++run) {
        if (s.diverged[static_cast<std::size_t>(run)]) continue;
        auto [steps, reason] = s.advance_run(run, from, step, *s.scratch[static_cast<std::size_t>(omp_get_thread_num())]);
        taken[static_cast<std::size_t>(run)] = steps;
        reasons[static_cast<std::size_t>(run)] = std::move(reason);
      }
    }
  }

  // This step's minibatch gradient (the one update step + 1 uses) and the
  // test metrics of every live run.
  std::vector<double> minibatch_loss(static_cast<std::size_t>(runs), 0.0);
  std::vector<std::pair<double, std::optional<double>>> test_metrics(static_cast<std::size_t>(runs));
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (std::int64_t run = 0; run < runs; ++run) {
    if (s.diverged[static_cast<std::size_t>(run)] || reasons[static_cast<std::size_t>(run)].bad()) continue;
    Scratch& scratch = *s.scratch[static_cast<std::size_t>(omp_get_thread_num())];
    const double loss = s.minibatch_gradient(run, step, scratch);
    minibatch_loss[static_cast<std::size_t>(run)] = loss;
    std::copy(scratch.grad.begin(), scratch.grad.end(), s.grads.begin() + run * s.num_params);
    std::string reason = s.divergence_reason("the minibatch loss", loss);
    if (!reason.empty()) {
      reasons[static_cast<std::size_t>(run)] = {step, std::move(reason)};
      continue;
    }
    if (s.test != nullptr) test_metrics[static_cast<std::size_t>(run)] = s.evaluate(s.theta_of(run), *s.test, scratch);
  }
  for (std::int64_t run = 0; run < runs; ++run) s.run_steps += taken[static_cast<std::size_t>(run)];

  // Full-data statistics: one exact profile per live run, runs spread over
  // threads, each profile on one thread with a fixed chunk size so that its
  // bits do not depend on the machine.
  ProfileOptions options;
  options.loss = c.loss;
  options.device = Device::cpu;
  options.threads = 1;
  options.chunk_rows = 1024;  // cache-sized chunks: the CPU engine's fastest
  std::vector<std::optional<Profile>> profiles(static_cast<std::size_t>(runs));
  std::vector<double> plain_losses(static_cast<std::size_t>(runs), 0.0);
  if (!c.profile) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (std::int64_t run = 0; run < runs; ++run) {
      if (s.diverged[static_cast<std::size_t>(run)] || reasons[static_cast<std::size_t>(run)].bad()) continue;
      plain_losses[static_cast<std::size_t>(run)] =
          s.evaluate(s.theta_of(run), s.train, *s.scratch[static_cast<std::size_t>(omp_get_thread_num())]).first;
    }
  } else {
    const detail::SingleThreadedBlas one_blas_thread(true);
    std::vector<Model> models(static_cast<std::size_t>(s.threads), s.model);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (std::int64_t run = 0; run < runs; ++run) {
      if (s.diverged[static_cast<std::size_t>(run)] || reasons[static_cast<std::size_t>(run)].bad()) continue;
      Model& model = models[static_cast<std::size_t>(omp_get_thread_num())];
      model.unflatten({s.theta_of(run), static_cast<std::size_t>(s.num_params)});
      try {
        profiles[static_cast<std::size_t>(run)] = profile_cpu(model, s.train, options);
      } catch (const InputError&) {
        // Non-finite outputs: the loss check below reports the run as diverged.
      }
    }
  }
  std::vector<SweepRow> new_rows;
  for (std::int64_t run = 0; run < runs; ++run) {
    if (s.diverged[static_cast<std::size_t>(run)]) continue;
    Verdict& verdict = reasons[static_cast<std::size_t>(run)];
    SweepRow row;
    row.run = run;
    row.batch_size = s.batch_size_of(run);
    row.lr = s.lr_of(run);
    row.replica = s.replica_of(run);
    row.step = step;
    if (!verdict.bad()) {
      if (c.profile) {
        const std::optional<Profile>& profile = profiles[static_cast<std::size_t>(run)];
        row.train_loss = profile ? profile->loss + s.loss_floor : std::numeric_limits<double>::quiet_NaN();
        if (profile) {
          row.grad_norm_sq = profile->grad_norm_sq;
          row.trace_cov = profile->trace_cov;
          row.noise_scale_simple = profile->noise_scale_simple;
        }
      } else {
        row.train_loss = plain_losses[static_cast<std::size_t>(run)] + s.loss_floor;
      }
      std::string reason = s.divergence_reason("the training loss", row.train_loss);
      if (!reason.empty()) verdict = {step, std::move(reason)};
    }
    if (verdict.bad()) {
      const std::int64_t at = verdict.step;
      s.mark_diverged(run, at, verdict.why);
      SweepRow last;
      last.run = run;
      last.batch_size = row.batch_size;
      last.lr = row.lr;
      last.replica = row.replica;
      last.step = at;
      last.epoch = static_cast<double>(at * last.batch_size) / static_cast<double>(s.train.n);
      last.diverged = true;
      new_rows.push_back(last);
      continue;
    }
    row.epoch = static_cast<double>(step * row.batch_size) / static_cast<double>(s.train.n);
    if (s.test != nullptr) {
      row.test_loss = test_metrics[static_cast<std::size_t>(run)].first;
      row.test_accuracy = test_metrics[static_cast<std::size_t>(run)].second;
    }
    row.minibatch_loss = minibatch_loss[static_cast<std::size_t>(run)];
    const double* g = s.grads.data() + run * s.num_params;
    const double* w = s.theta_of(run);
    for (std::int64_t p = 0; p < s.num_params; ++p) {
      row.minibatch_grad_norm_sq += g[p] * g[p];
      row.weight_norm_sq += w[p] * w[p];
    }
    new_rows.push_back(row);
  }

  // Across the live replicas of each grid point.
  const std::int64_t p_count = s.num_params;
  for (std::int64_t grid = 0; grid < s.grid_points(); ++grid) {
    ReplicaStats stats;
    stats.step = step;
    std::vector<std::int64_t> live;
    for (std::int64_t r = 0; r < c.replicas; ++r) {
      const std::int64_t run = grid * c.replicas + r;
      if (!s.diverged[static_cast<std::size_t>(run)]) live.push_back(run);
    }
    stats.live_replicas = static_cast<std::int64_t>(live.size());
    const auto spread = [&](const std::vector<double>& values) -> std::optional<double> {
      if (live.size() < 2) return std::nullopt;
      double total = 0;
      for (std::int64_t p = 0; p < p_count; ++p) {
        double mean = 0;
        for (std::int64_t run : live) mean += values[static_cast<std::size_t>(run * p_count + p)];
        mean /= static_cast<double>(live.size());
        double ss = 0;
        for (std::int64_t run : live) {
          const double e = values[static_cast<std::size_t>(run * p_count + p)] - mean;
          ss += e * e;
        }
        total += ss;
      }
      return total / static_cast<double>(live.size() - 1);
    };
    stats.weight_var = spread(s.theta);
    stats.grad_var = spread(s.grads);
    std::vector<double> train_losses, test_losses, test_accuracies;
    double noise = 0;
    bool have_noise = c.profile && !live.empty();
    const std::int64_t b = s.batch_size_of(grid * c.replicas);
    const double factor = c.sampling == Sampling::with_replacement ? 1.0 / static_cast<double>(b)
                          : c.sampling == Sampling::without_replacement
                              ? without_replacement_factor(s.train.n, b)
                              : 0.0;
    for (const SweepRow& row : new_rows) {
      if (row.diverged || s.grid_of(row.run) != grid) continue;
      train_losses.push_back(row.train_loss);
      if (row.test_loss) test_losses.push_back(*row.test_loss);
      if (row.test_accuracy) test_accuracies.push_back(*row.test_accuracy);
      if (row.trace_cov) noise += factor * *row.trace_cov;
    }
    if (have_noise) stats.expected_minibatch_noise = noise / static_cast<double>(live.size());
    std::tie(stats.train_loss_mean, stats.train_loss_std) = mean_std(train_losses);
    stats.test_loss_mean = mean_std(test_losses).first;
    stats.test_accuracy_mean = mean_std(test_accuracies).first;
    s.trajectories[static_cast<std::size_t>(grid)].push_back(stats);
  }

  s.rows.insert(s.rows.end(), new_rows.begin(), new_rows.end());
  s.logs_done = log_index + 1;
  s.elapsed_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void Sweep::run(const std::function<void(std::int64_t, std::int64_t)>& progress) {
  const auto total = static_cast<std::int64_t>(state_->log_steps.size());
  while (!done()) {
    advance();
    if (progress) progress(state_->logs_done, total);
  }
}

// ---- Results --------------------------------------------------------------------

SweepResult Sweep::result() const {
  const State& s = *state_;
  const SweepConfig& c = s.config;
  SweepResult result;
  result.num_params = s.num_params;
  result.n = s.train.n;
  result.rows = s.rows;
  result.divergences = s.divergences;
  std::sort(result.divergences.begin(), result.divergences.end(),
            [](const Divergence& a, const Divergence& b) { return a.run < b.run; });
  result.elapsed_s = s.elapsed_s;
  result.run_steps = s.run_steps;
  result.device = s.device;
  for (std::int64_t run = 0; run < s.num_runs; ++run) {
    result.final_weights.emplace_back(s.theta.begin() + run * s.num_params,
                                      s.theta.begin() + (run + 1) * s.num_params);
  }
  for (std::int64_t grid = 0; grid < s.grid_points(); ++grid) {
    GridPointSummary summary;
    const std::int64_t first_run = grid * c.replicas;
    summary.batch_size = s.batch_size_of(first_run);
    summary.lr = s.lr_of(first_run);
    summary.trajectory = s.trajectories[static_cast<std::size_t>(grid)];
    std::int64_t diverged = 0;
    std::vector<double> late_means;
    for (std::int64_t run = first_run; run < first_run + c.replicas; ++run) {
      if (s.diverged[static_cast<std::size_t>(run)]) {
        ++diverged;
        continue;
      }
      double total = 0;
      std::int64_t count = 0;
      for (const SweepRow& row : s.rows) {
        if (row.run == run && !row.diverged && 2 * row.step >= c.steps) {
          total += row.train_loss;
          ++count;
        }
      }
      if (count > 0) late_means.push_back(total / static_cast<double>(count));
    }
    std::tie(summary.train_loss_mean, summary.train_loss_std) = mean_std(late_means);
    if (!summary.trajectory.empty()) summary.weight_var = summary.trajectory.back().weight_var;
    summary.diverged_fraction = static_cast<double>(diverged) / static_cast<double>(c.replicas);
    result.grid.push_back(std::move(summary));
  }
  return result;
}

// ---- Checkpoints -------------------------------------------------------------------

namespace {

json row_json(const SweepRow& row) {
  return json::array({row.run, row.step, row.diverged, row.train_loss, optional_json(row.test_loss),
                      optional_json(row.test_accuracy), optional_json(row.grad_norm_sq),
                      optional_json(row.trace_cov), optional_json(row.noise_scale_simple),
                      row.minibatch_loss, row.minibatch_grad_norm_sq, row.weight_norm_sq});
}

json stats_json(const ReplicaStats& stats) {
  return json::array({stats.step, stats.live_replicas, optional_json(stats.weight_var),
                      optional_json(stats.grad_var), optional_json(stats.expected_minibatch_noise),
                      optional_json(stats.train_loss_mean), optional_json(stats.train_loss_std),
                      optional_json(stats.test_loss_mean), optional_json(stats.test_accuracy_mean)});
}

/// Version 2 (sampling without replacement by a Feistel permutation, no
/// stored state) reads version 1 where the draws did not change: with
/// replacement and in fixed order.
constexpr int kCheckpointVersion = 2;

}  // namespace

std::string Sweep::checkpoint() const {
  const State& s = *state_;
  json rows = json::array();
  for (const SweepRow& row : s.rows) rows.push_back(row_json(row));
  json trajectories = json::array();
  for (const auto& trajectory : s.trajectories) {
    json points = json::array();
    for (const ReplicaStats& stats : trajectory) points.push_back(stats_json(stats));
    trajectories.push_back(points);
  }
  json divergences = json::array();
  for (const Divergence& d : s.divergences) divergences.push_back({d.run, d.step, d.reason});
  const json state = {{"format", "gradnoise-sweep-checkpoint"},
                      {"version", kCheckpointVersion},
                      {"fingerprint", hex(s.fingerprint)},
                      {"logs_done", s.logs_done},
                      {"run_steps", s.run_steps},
                      {"elapsed_s", s.elapsed_s},
                      {"theta", binary_doubles(s.theta)},
                      {"velocity", binary_doubles(s.velocity)},
                      {"grads", binary_doubles(s.grads)},
                      {"diverged", s.diverged},
                      {"divergences", divergences},
                      {"rows", rows},
                      {"trajectories", trajectories}};
  const std::vector<std::uint8_t> bytes = json::to_cbor(state);
  return {bytes.begin(), bytes.end()};
}

void Sweep::restore(const std::string& bytes) {
  State& s = *state_;
  json state;
  try {
    state = json::from_cbor(bytes);
  } catch (const json::exception&) {
    throw InputError("the checkpoint is not a gradnoise sweep checkpoint (it does not parse).");
  }
  try {
    const int version = state.value("version", 0);
    if (state.value("format", "") != "gradnoise-sweep-checkpoint" || version < 1 ||
        version > kCheckpointVersion) {
      throw InputError("the checkpoint is not a version-1 or version-2 gradnoise sweep checkpoint.");
    }
    if (version == 1 && s.config.sampling == Sampling::without_replacement) {
      throw InputError("the checkpoint is version 1, whose sampling without replacement followed a "
                       "Fisher–Yates shuffle that version 2 no longer draws; start this sweep again "
                       "without the checkpoint.");
    }
    if (state.at("fingerprint").get<std::string>() != hex(s.fingerprint)) {
      throw InputError("the checkpoint was written by a sweep with other options, data or starting "
                       "weights; give the same ones, or another checkpoint file.");
    }
    const auto logs_done = state.at("logs_done").get<std::int64_t>();
    if (logs_done < 0 || logs_done > static_cast<std::int64_t>(s.log_steps.size())) {
      throw InputError("the checkpoint's progress does not fit this sweep.");
    }
    s.theta = doubles_from(state.at("theta"), s.theta.size(), "weights");
    s.velocity = doubles_from(state.at("velocity"), s.velocity.size(), "velocities");
    s.grads = doubles_from(state.at("grads"), s.grads.size(), "gradients");
    s.diverged = state.at("diverged").get<std::vector<std::uint8_t>>();
    if (s.diverged.size() != static_cast<std::size_t>(s.num_runs)) {
      throw InputError("the checkpoint's run count does not fit this sweep.");
    }
    s.divergences.clear();
    for (const json& d : state.at("divergences")) {
      s.divergences.push_back({d.at(0).get<std::int64_t>(), d.at(1).get<std::int64_t>(),
                               d.at(2).get<std::string>()});
    }
    s.rows.clear();
    for (const json& r : state.at("rows")) {
      SweepRow row;
      row.run = r.at(0).get<std::int64_t>();
      row.batch_size = s.batch_size_of(row.run);
      row.lr = s.lr_of(row.run);
      row.replica = s.replica_of(row.run);
      row.step = r.at(1).get<std::int64_t>();
      row.epoch = static_cast<double>(row.step * row.batch_size) / static_cast<double>(s.train.n);
      row.diverged = r.at(2).get<bool>();
      row.train_loss = r.at(3).get<double>();
      row.test_loss = optional_from(r.at(4));
      row.test_accuracy = optional_from(r.at(5));
      row.grad_norm_sq = optional_from(r.at(6));
      row.trace_cov = optional_from(r.at(7));
      row.noise_scale_simple = optional_from(r.at(8));
      row.minibatch_loss = r.at(9).get<double>();
      row.minibatch_grad_norm_sq = r.at(10).get<double>();
      row.weight_norm_sq = r.at(11).get<double>();
      s.rows.push_back(row);
    }
    const json& trajectories = state.at("trajectories");
    if (trajectories.size() != s.trajectories.size()) {
      throw InputError("the checkpoint's grid does not fit this sweep.");
    }
    for (std::size_t grid = 0; grid < trajectories.size(); ++grid) {
      s.trajectories[grid].clear();
      for (const json& t : trajectories[grid]) {
        ReplicaStats stats;
        stats.step = t.at(0).get<std::int64_t>();
        stats.live_replicas = t.at(1).get<std::int64_t>();
        stats.weight_var = optional_from(t.at(2));
        stats.grad_var = optional_from(t.at(3));
        stats.expected_minibatch_noise = optional_from(t.at(4));
        stats.train_loss_mean = optional_from(t.at(5));
        stats.train_loss_std = optional_from(t.at(6));
        stats.test_loss_mean = optional_from(t.at(7));
        stats.test_accuracy_mean = optional_from(t.at(8));
        s.trajectories[grid].push_back(stats);
      }
    }
    s.logs_done = logs_done;
    s.run_steps = state.at("run_steps").get<std::int64_t>();
    s.elapsed_s = state.at("elapsed_s").get<double>();
  } catch (const json::exception& error) {
    throw InputError(std::string("the checkpoint is damaged (") + error.what() + ").");
  }
}

// ---- CSV ------------------------------------------------------------------------------

std::string sweep_rows_csv(const SweepResult& result) {
  const auto number = [](double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.17g", value);
    return std::string(buffer);
  };
  const auto optional = [&](const std::optional<double>& value) {
    return value ? number(*value) : std::string();
  };
  std::string csv =
      "run,batch_size,lr,replica,step,epoch,status,train_loss,test_loss,test_accuracy,"
      "grad_norm_sq,trace_cov,noise_scale_simple,minibatch_loss,minibatch_grad_norm_sq,"
      "weight_norm_sq\n";
  for (const SweepRow& row : result.rows) {
    csv += std::to_string(row.run) + "," + std::to_string(row.batch_size) + "," + number(row.lr) +
           "," + std::to_string(row.replica) + "," + std::to_string(row.step) + "," +
           number(row.epoch) + ",";
    if (row.diverged) {
      csv += "diverged,,,,,,,,,\n";
      continue;
    }
    csv += "ok," + number(row.train_loss) + "," + optional(row.test_loss) + "," +
           optional(row.test_accuracy) + "," + optional(row.grad_norm_sq) + "," +
           optional(row.trace_cov) + "," + optional(row.noise_scale_simple) + "," +
           number(row.minibatch_loss) + "," + number(row.minibatch_grad_norm_sq) + "," +
           number(row.weight_norm_sq) + "\n";
  }
  return csv;
}

}  // namespace gradnoise
