// The elementwise losses, one struct each: the loss of one element and its
// derivatives w.r.t. the input x and the target t, on vectors of any ISA.
//
// Included inside a per-ISA namespace after simd/math.h. An op is
//
//   struct NameOp : OpDefaults {
//     template <class V> static OpOut<V> eval(V x, V t, V pw, const OpConsts<V>& k);
//   };
//
// OpDefaults says what an op may override: kChecksDomain (then it has
// out_of_domain(v), applied to x and t) and kGradScale, an exact constant
// factor of both gradients that the loop folds into the upstream gradient
// (MSE's 2: 2 * d could overflow where d * (2 g / n) does not, as in torch).
//
// `pw` is BCE-with-logits' pos_weight (1 for every other op), `k` holds the
// op's parameter. eval returns all three values; after inlining the compiler
// drops whichever the calling loop does not store. The generic loop
// (elementwise.h) multiplies all three by weight, scale and the upstream
// gradient. Formulas follow aten's CPU kernels and derivatives.yaml, so
// values (and NaN / inf placement) are torch's. Lanes past the end of an
// array read x = t = 0, which every op maps to finite values.
#pragma once

template <class V> struct OpOut {
  V loss, gx, gt;
};

// The op's parameter (delta, beta) and what is derived from it, set once per call.
template <class V> struct OpConsts {
  V p, half_p;
  static OpConsts make(double param) {
    using T = typename V::T;
    return {V::set1(static_cast<T>(param)), V::set1(static_cast<T>(0.5 * param))};
  }
};

struct OpDefaults {
  static constexpr bool kChecksDomain = false;
  static constexpr double kGradScale = 1;
};

// sign(d) with sign(0) = 0 and, as torch.sign's gradient use, sign(NaN) = 0.
template <class V> inline V vsign(V d) {
  return select(gt(d, V::set1(0)), V::set1(1), select(lt(d, V::set1(0)), V::set1(-1), V::set1(0)));
}

// log(1 + u) to within the log's own bound for every u >= -1 (Goldberg's
// correction: 1 + u is rounded, (1 + u) - 1 says by how much).
template <class V> inline V vlog1p(V u) {
  const V y = V::set1(1) + u;
  const V d = y - V::set1(1);
  return select(eq(d, V::set1(0)), u, vlog(y) * (u / d));
}

// log(1 + exp(-|x|)), exp(-|x|) and 1 / (1 + exp(-|x|)): the stable pieces of
// softplus and sigmoid, with one division (the sigmoid's). float: log1p(e) as
// a polynomial in e (vlog1p_unit). double: log(y) + c / y, y = 1 + e rounded
// and c = e - (y - 1) its rounding error (fdlibm's log1p correction), so the
// sigmoid's reciprocal serves both.
template <class V> struct SoftplusParts {
  V e, r, log1p_e;
  explicit SoftplusParts(V x) : e(vexp_nonpos(vnegabs(x))) {
    const V y = V::set1(1) + e;
    r = V::set1(1) / y;
    if constexpr (sizeof(typename V::T) == 4) {
      log1p_e = vlog1p_unit(e);
    } else {
      log1p_e = fmadd(e - (y - V::set1(1)), r, vlog_1to2(y));  // y in [1, 2]
    }
  }
  V softplus_neg(V x) const { return vmax(V::set1(0) - x, V::set1(0)) + log1p_e; }  // log(1 + e^-x)
  V softplus(V x) const { return vmax(x, V::set1(0)) + log1p_e; }                    // log(1 + e^x)
  V sigmoid(V x) const { return select(lt(x, V::set1(0)), e, V::set1(1)) * r; }
  V sigmoid_neg(V x) const { return select(gt(x, V::set1(0)), e, V::set1(1)) * r; }  // s(-x)
};

struct MseOp : OpDefaults {
  static constexpr double kGradScale = 2;
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V d = x - t;
    return {d * d, d, V::set1(0) - d};
  }
};

struct L1Op : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V d = x - t, s = vsign(d);
    return {vabs(d), s, V::set1(0) - s};
  }
};

// 0.5 d^2 for |d| < delta, else delta (|d| - delta / 2); gradient clamp(d, -delta, delta).
struct HuberOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>& k) {
    const V d = x - t, a = vabs(d);
    const V loss = select(lt(a, k.p), V::set1(0.5) * d * d, k.p * (a - k.half_p));
    const V g = select(gt(d, k.p), k.p, select(lt(d, V::set1(0) - k.p), V::set1(0) - k.p, d));
    return {loss, g, V::set1(0) - g};
  }
};

// 0.5 d^2 / beta for |d| < beta, else |d| - beta / 2 (beta > 0; beta = 0 is L1,
// chosen by the Python layer as torch does). One division, r = d / beta, for
// both: the loss as 0.5 d r is as accurate as torch's 0.5 d d / beta (two
// roundings after the exact 0.5 d each), and divisions bound this loop.
struct SmoothL1Op : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>& k) {
    const V d = x - t, a = vabs(d), r = d / k.p;
    const V loss = select(lt(a, k.p), V::set1(0.5) * d * r, a - k.half_p);
    const V g = select(ge(d, k.p), V::set1(1), select(le(d, V::set1(0) - k.p), V::set1(-1), r));
    return {loss, g, V::set1(0) - g};
  }
};

// log1p(u) for u in [-0.5, 0]: a polynomial in float, vlog1p in double.
template <class V> inline V log1p_neg_half(V u) {
  if constexpr (sizeof(typename V::T) == 4) {
    return vlog1p_neg_half(u);
  } else {
    return vlog1p(u);
  }
}

// -(t log x + (1 - t) log(1 - x)), each log clamped at -100 (aten's
// binary_cross_entropy); the gradient divides by max(x (1 - x), 1e-12f). The
// target gradient is -logit(x) with unclamped logs, as torch's
// (binary_cross_entropy_target_backward): +inf at x = 0, -inf at x = 1.
// Input and target must lie in [0, 1] (NaN does not), as torch checks.
struct BceOp : OpDefaults {
  static constexpr bool kChecksDomain = true;
  template <class V> static auto out_of_domain(V v) { return nge(v, V::set1(0)) | gt(v, V::set1(1)); }
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V lo = V::set1(-100), one = V::set1(1);
    // One of log x and log(1 - x) is the log of v = min(x, 1 - x) (1 - x is
    // exact for x >= 0.5, Sterbenz), the other log1p(-v), u = -v in [-0.5, 0].
    const auto upper = ge(x, V::set1(0.5));
    const V v = vmin(x, one - x), u = V::set1(0) - v;
    const V near = log1p_neg_half(u), far = vlog<true>(v);  // v in [0, 0.5], or NaN
    const V ln_x = select(upper, near, far), ln_1mx = select(upper, far, near);
    const V log_x = vmax(ln_x, lo), log_1mx = vmax(ln_1mx, lo);
    const V loss = (t - V::set1(1)) * log_1mx - t * log_x;
    // torch's EPSILON is the float 1e-12f in every dtype (aten/src/ATen/native/Loss.cpp).
    const V gx = (x - t) / vmax((V::set1(1) - x) * x, V::set1(static_cast<typename V::T>(1e-12f)));
    return {loss, gx, ln_1mx - ln_x};
  }
};

// (1 - t) x + softplus(-x) (aten's binary_cross_entropy_with_logits without
// pos_weight, with log_sigmoid(x) = -softplus(-x)); gradients sigmoid(x) - t and
// -x, torch's own forms (an infinite target gives torch's infinities, not the
// NaN of the pos_weight forms below with pos_weight 1).
struct BceWithLogitsOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const SoftplusParts<V> sp(x);
    const V one = V::set1(1);
    return {(one - t) * x + sp.softplus_neg(x), sp.sigmoid(x) - t, V::set1(0) - x};
  }
};

// With pos_weight p, torch's forms (binary_cross_entropy_with_logits and its
// backward formulas in derivatives.yaml): loss (1 - t) x + (1 + (p - 1) t)
// softplus(-x), gradient (p t + 1 - t) sigmoid(x) - p t, target gradient
// log_sigmoid(-x) - p log_sigmoid(x) = p softplus(-x) - softplus(x). The loss's
// two products are rounded before they are added, as torch's: where they cancel
// (p = 0 and x << 0: both are (1 - t) |x|) the sum is 0, not an FMA's rounding
// error of one of them (a negative loss, -1.2e-4 at x = -1e4).
struct BceWithLogitsPosWeightOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V pw, const OpConsts<V>&) {
    const SoftplusParts<V> sp(x);
    const V one = V::set1(1);
    const V spn = sp.softplus_neg(x);
    const V pt = pw * t;
    const V loss = rounded((one - t) * x) + rounded(((pw - one) * t + one) * spn);
    const V gx = (pt + one - t) * sp.sigmoid(x) - pt;
    const V gt = pw * spn - sp.softplus(x);
    return {loss, gx, gt};
  }
};

// xlogy(t, t) - t x (torch.kl_div, log_target=False): 0 where t == 0. The
// target derivative is autograd's through xlogy, xlogy(t != 0, t) + t / t - x:
// NaN at t == 0 and t == inf, as torch's.
struct KlDivOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V zero = V::set1(0);
    const V log_t = vlog(t);
    const V xlogy_tt = select(eq(t, zero), zero, t * log_t);
    const V gt = (select(eq(t, zero), zero, log_t) + t / t) - x;
    return {xlogy_tt - t * x, zero - t, gt};
  }
};

// exp(t) (t - x) (torch.kl_div, log_target=True).
struct KlDivLogTargetOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V et = vexp(t), loss = et * (t - x);
    return {loss, V::set1(0) - et, loss + et};
  }
};

// relu(1 - t x), t = +-1: the GAN objective's hinge terms. As torch.relu, a
// NaN stays NaN and passes the gradient; the kink (1 - t x == 0) has gradient 0.
struct HingeOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V zero = V::set1(0), m = V::set1(1) - t * x;
    const auto off = le(m, zero);
    return {select(off, zero, m), select(off, zero, zero - t), select(off, zero, zero - x)};
  }
};

// softplus(-t x) = log(1 + e^(-t x)), t = +-1: the GAN objective's logistic
// terms, -log s(x) (t = 1) and -log(1 - s(x)) (t = -1). Not BceWithLogitsOp at
// t = 0: its x + softplus(-x) keeps none of softplus(x) = 2.3e-7 at x = -15 in
// float32, and is NaN at x = +-inf, where softplus is 0 or inf as torch's.
struct LogisticOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) {
    const V m = t * x;
    const SoftplusParts<V> sp(m);
    const V s_neg = sp.sigmoid_neg(m);  // from e = exp(-|m|) without cancellation; NaN stays NaN
    return {sp.softplus_neg(m), (V::set1(0) - t) * s_neg, V::set1(0) - x * s_neg};  // -t: loop-invariant
  }
};

// t x: the Wasserstein GAN objective's terms.
struct LinearOp : OpDefaults {
  template <class V> static OpOut<V> eval(V x, V t, V, const OpConsts<V>&) { return {t * x, t, x}; }
};
