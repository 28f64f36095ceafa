// The contract between the compiled kernels and everything above them.
//
// Kernels see raw pointers into contiguous buffers, sizes and a thread count.
// They know nothing of Python, NumPy or torch. Every ISA build of
// kernels_isa.cpp fills one KernelTable; dispatch.cpp picks the table once
// for the running CPU.
#pragma once

#include <cstdint>

namespace fusedloss {

// Element types a buffer may hold. Half types are storage only: every
// computation on them runs in float.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

enum class Reduction : int { None = 0, Mean = 1, Sum = 2 };

// Softmax cross-entropy over a contiguous input viewed as outer x classes x inner
// ((N, C) input: outer = N, inner = 1; (N, C, d1..dk): inner = d1*...*dk;
// (C,): outer = 1, inner = 1).
//
// Pointers typed `const void*` / `void*` hold elements of `dtype` (the storage
// type S). Pointers typed as "accum" hold the accumulation type A: double for
// Float64, float for every other dtype.
struct CrossEntropyProblem {
  DType dtype;
  const void* input;            // S[outer * classes * inner]
  int64_t outer;
  int64_t classes;
  int64_t inner;
  // Exactly one of the two targets is set.
  const int64_t* target_index;  // int64[outer * inner]: class indices, or nullptr
  const void* target_prob;      // S[outer * classes * inner]: probabilities, or nullptr
  const void* weight;           // A[classes], or nullptr (all ones)
  int64_t ignore_index;         // index targets only
  double label_smoothing;       // in [0, 1]
  Reduction reduction;
  // Forward outputs.
  void* loss;                   // A[outer * inner]: per-element loss; only read for Reduction::None, may be nullptr
  // Gradient of sum(grad_output * loss) w.r.t. input. nullptr: forward only.
  // May equal `input` (in-place gradient): each element is read before it is written.
  void* grad_input;             // S[outer * classes * inner], or nullptr
  const void* grad_output;      // A[outer * inner] for Reduction::None, or nullptr
  double grad_output_scalar;    // the upstream gradient when grad_output is nullptr
  // LLM options (the defaults change nothing). The softmax runs on
  // z = logit_scale * x, then, when softcap > 0, z = softcap * tanh(z / softcap);
  // grad_input is still the gradient w.r.t. x.
  double logit_scale = 1.0;
  double softcap = 0.0;         // 0: no cap
  // z-loss: every position that is not ignored adds
  // lse_square_scale * logsumexp(z)^2 to its loss (not multiplied by weight).
  double lse_square_scale = 0.0;
  void* lse_out = nullptr;      // A[outer * inner]: logsumexp(z) per position, NaN where ignored; or nullptr
};

struct CrossEntropyResult {
  // Reduced loss (already divided by the denominator for Mean; NaN for a mean
  // over nothing). 0 for Reduction::None.
  double loss;
  // -1 when all index targets are valid. Otherwise the flat position of the
  // first target that is neither in [0, classes) nor ignore_index; then
  // nothing was written to loss or grad_input.
  int64_t bad_target_position;
};

// The elementwise losses: one line each, (enum name, op struct in
// elementwise_ops.h, Python name). The enum, the kernels' switch and the
// binding's table of op codes are all derived from this list.
#define FUSEDLOSS_ELEMENTWISE_OPS(X)                                  \
  X(Mse, MseOp, "mse")                                                \
  X(L1, L1Op, "l1")                                                   \
  X(Huber, HuberOp, "huber")                                          \
  X(SmoothL1, SmoothL1Op, "smooth_l1")                                \
  X(Bce, BceOp, "binary_cross_entropy")                               \
  X(BceWithLogits, BceWithLogitsOp, "binary_cross_entropy_with_logits") \
  X(KlDiv, KlDivOp, "kl_div")                                         \
  X(KlDivLogTarget, KlDivLogTargetOp, "kl_div_log_target")            \
  X(Hinge, HingeOp, "hinge")                                          \
  X(Linear, LinearOp, "linear")                                       \
  X(Logistic, LogisticOp, "logistic")                                 \
  X(BceWithLogitsPosWeight, BceWithLogitsPosWeightOp, "binary_cross_entropy_with_logits_pos_weight")

enum class ElementwiseOp : int {
#define FUSEDLOSS_ENUM_ENTRY(name, op, py) name,
  FUSEDLOSS_ELEMENTWISE_OPS(FUSEDLOSS_ENUM_ENTRY)
#undef FUSEDLOSS_ENUM_ENTRY
};

// A per-element factor (weight, pos_weight) broadcast against the flat input:
// element i uses values[(i / repeat) % period]. period == n, repeat == 1 is a
// full array; period 1 a scalar; the Python layer expresses torch's
// broadcasting in these two numbers (or materialises the rare other cases).
struct Broadcast {
  const void* values = nullptr;  // A[period], or nullptr (all ones)
  int64_t period = 1;
  int64_t repeat = 1;
};

// An elementwise loss over n contiguous elements: loss_i = w_i * scale *
// op(x_i, t_i), its gradient w.r.t. x (and, when asked, w.r.t. t).
// For L1 with complex input, `complex_input` is true, `dtype` is the real part
// type (Float32/Float64) and `input`/`target`/`grad_input` hold 2*n reals
// (interleaved re, im); loss and grad_output stay real (A[n]).
struct ElementwiseProblem {
  ElementwiseOp op;
  DType dtype;
  bool complex_input;
  const void* input;         // S[n] (complex: S[2n])
  const void* target;        // S[n] (complex: S[2n]), or nullptr: every t_i = target_scalar
  double target_scalar;
  int64_t n;
  double param;              // the op's parameter: delta (Huber), beta (SmoothL1), margin (Hinge)
  double scale;              // multiplies loss and gradients (the GAN objective's 1/2 and -1)
  Broadcast weight;          // multiplies loss and gradients
  Broadcast pos_weight;      // BCE with logits only
  Reduction reduction;
  double mean_denominator;   // Mean divides by this (n when <= 0)
  void* loss;                // A[n] per-element loss for Reduction::None, or nullptr
  void* grad_input;          // S[n] (complex: S[2n]), or nullptr; may equal input
  void* grad_target;         // S[n], or nullptr; may equal target
  const void* grad_output;   // A[n] for Reduction::None, or nullptr
  double grad_output_scalar; // used when grad_output is nullptr
};

struct ElementwiseResult {
  // Reduced loss (0 for Reduction::None; NaN for a mean over nothing).
  double loss;
  // Input and target elements outside the op's domain (BCE: not in [0, 1]);
  // when either is > 0 the outputs hold garbage and the caller raises.
  int64_t input_out_of_domain;
  int64_t target_out_of_domain;
};

// Losses over class indices, one pass over each row (class_losses.h):
// nll_loss on an outer x classes x inner view (as cross-entropy), and
// multi_margin_loss on rows (inner == 1). Pointer types as CrossEntropyProblem.
struct ClassLossProblem {
  DType dtype;
  const void* input;          // S[outer * classes * inner]
  int64_t outer;
  int64_t classes;
  int64_t inner;
  const int64_t* target;      // int64[outer * inner]
  const void* weight;         // A[classes], or nullptr (all ones)
  int64_t ignore_index;       // nll only
  int p;                      // multi_margin only: 1 or 2
  double margin;              // multi_margin only
  Reduction reduction;
  void* loss;                 // A[outer * inner] per-position loss for Reduction::None, or nullptr
  void* grad_input;           // S[outer * classes * inner], or nullptr; may equal input
  const void* grad_output;    // A[outer * inner] for Reduction::None, or nullptr
  double grad_output_scalar;  // used when grad_output is nullptr
};

// Distillation KL divergence between softmax(target / T) (the teacher) and
// softmax(input / T) (the student), both raw logits, contiguous rows x classes:
// per row T^2 sum_j p_j (log p_j - log q_j) (kl_div_logits.h). Reduction::Mean
// divides by rows (torch's "batchmean"). The gradient is w.r.t. input only.
struct KLDivLogitsProblem {
  DType dtype;
  const void* input;         // S[rows * classes]
  const void* target;        // S[rows * classes]
  int64_t rows;
  int64_t classes;
  double temperature;        // finite, > 0
  Reduction reduction;
  void* loss;                // A[rows] per-row loss for Reduction::None, or nullptr
  void* grad_input;          // S[rows * classes], or nullptr; may equal input
  const void* grad_output;   // A[rows] for Reduction::None, or nullptr
  double grad_output_scalar; // used when grad_output is nullptr
};

// Returns the reduced loss (0 for Reduction::None; NaN for a mean over nothing).
using CrossEntropyFn = CrossEntropyResult (*)(const CrossEntropyProblem&, int threads);
using ElementwiseFn = ElementwiseResult (*)(const ElementwiseProblem&, int threads);
// Result as cross-entropy's: the reduced loss, or the first bad target (nll:
// neither in [0, classes) nor ignore_index; multi_margin: not in [0, classes)).
using ClassLossFn = CrossEntropyResult (*)(const ClassLossProblem&, int threads);
using KLDivLogitsFn = double (*)(const KLDivLogitsProblem&, int threads);

// The kernels' own exp/log/tanh over n contiguous Float32 or Float64 values,
// and their log1p polynomials over Float32 ones (vlog1p_unit on [0, 1],
// vlog1p_neg_half on [-0.5, 0]), for the tests that bound their error; one thread.
enum class MathOp : int { Exp = 0, Log = 1, Tanh = 2, Log1pUnit = 3, Log1pNegHalf = 4 };
using MathFn = void (*)(MathOp op, DType dtype, const void* in, void* out, int64_t n);

struct KernelTable {
  const char* name;  // "baseline", "avx2", "avx512"
  CrossEntropyFn cross_entropy;
  ElementwiseFn elementwise;
  MathFn math;
  ClassLossFn nll;
  ClassLossFn multi_margin;
  KLDivLogitsFn kl_div_logits;
};

// One per ISA build; each lives in its own translation unit and namespace.
const KernelTable& baseline_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();

}  // namespace fusedloss
