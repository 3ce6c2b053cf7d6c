//! Unary and broadcasting binary ops, scalar ops, comparisons and `where`.

use super::{check_same, with_storage_list, with_storages};
use crate::autograd::record;
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::storage::{BinaryOp, UnaryOp};
use crate::{Layout, Tensor};

impl Tensor {
    /// Applies a unary kernel, no tape (building block for ops and backwards).
    pub(crate) fn map_unary(&self, op: UnaryOp) -> Result<Tensor> {
        let st = self.storage().unary(self.layout(), op)?;
        Ok(Tensor::from_contiguous(st, self.shape()))
    }

    /// Applies a broadcasting binary kernel, no tape.
    pub(crate) fn map_binary(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        name: &'static str,
    ) -> Result<Tensor> {
        check_same(name, self, rhs)?;
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        let l = self.layout().broadcast_to(name, &shape)?;
        let r = rhs.layout().broadcast_to(name, &shape)?;
        let st = with_storages(self, rhs, |a, b| a.binary(&l, b, &r, op))?;
        Ok(Tensor::from_contiguous(st, &shape))
    }

    /// A unary op whose derivative reads one saved tensor: the input or the
    /// output, whichever the formula needs (only that one is kept alive).
    fn unary_with_grad(
        &self,
        op: UnaryOp,
        name: &'static str,
        keep: Keep,
        grad: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Result<Tensor> {
        let out = self.map_unary(op)?;
        let saved = match keep {
            Keep::Input => self.detach(),
            Keep::Output => out.detach(),
        };
        Ok(record(out, name, &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(grad(g, &saved)?)]))
        }))
    }

    /// A unary op with a constant derivative `d`: saves nothing.
    fn unary_linear(&self, op: UnaryOp, name: &'static str, d: f64) -> Result<Tensor> {
        let out = self.map_unary(op)?;
        Ok(record(out, name, &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(g.mul_scalar(d)?)]))
        }))
    }

    /// −x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_linear(UnaryOp::Neg, "neg", -1.0)
    }
    /// eˣ; d/dx = eˣ (reuses the output).
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Exp, "exp", Keep::Output, |g, y| g.mul(y))
    }
    /// ln x; d/dx = 1/x.
    pub fn log(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Log, "log", Keep::Input, |g, x| g.div(x))
    }
    /// √x; d/dx = 1/(2√x).
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sqrt, "sqrt", Keep::Output, |g, y| {
            g.div(y)?.mul_scalar(0.5)
        })
    }
    /// x²; d/dx = 2x.
    pub fn square(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sqr, "square", Keep::Input, |g, x| {
            g.mul(x)?.mul_scalar(2.0)
        })
    }
    /// xᵉ; d/dx = e·xᵉ⁻¹ (0 for e = 0, also at x = 0).
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        if e == 0.0 {
            return self.unary_linear(UnaryOp::Powf(e), "powf", 0.0);
        }
        self.unary_with_grad(UnaryOp::Powf(e), "powf", Keep::Input, move |g, x| {
            g.mul(&x.map_unary(UnaryOp::Powf(e - 1.0))?)?.mul_scalar(e)
        })
    }
    /// |x|; d/dx = sign(x) (0 at 0, as PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Abs, "abs", Keep::Input, |g, x| {
            g.mul(&x.map_unary(UnaryOp::Sign)?)
        })
    }
    /// 1/x; d/dx = −1/x².
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Recip, "recip", Keep::Output, |g, y| {
            g.mul(&y.square()?)?.neg()
        })
    }
    /// σ(x) = 1/(1+e⁻ˣ); backward fused in one kernel.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sigmoid, "sigmoid", Keep::Input, |g, x| {
            x.map_binary(g, BinaryOp::SigmoidBackward, "sigmoid_backward")
        })
    }
    /// SiLU x·σ(x); backward σ(x)(1 + x(1−σ(x))) fused in one kernel.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Silu, "silu", Keep::Input, |g, x| {
            x.map_binary(g, BinaryOp::SiluBackward, "silu_backward")
        })
    }
    /// tanh x; d/dx = 1 − tanh²x.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Tanh, "tanh", Keep::Input, |g, x| {
            x.map_binary(g, BinaryOp::TanhBackward, "tanh_backward")
        })
    }
    /// max(x, 0); d/dx = 1[x > 0].
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Relu, "relu", Keep::Input, |g, x| {
            x.map_binary(g, BinaryOp::ReluBackward, "relu_backward")
        })
    }
    /// x·mul + add in one pass; d/dx = mul.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary_linear(UnaryOp::Affine { mul, add }, "affine", mul)
    }
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, c)
    }
    pub fn sub_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, -c)
    }
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(c, 0.0)
    }
    pub fn div_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0 / c, 0.0)
    }
    /// min(max(x, lo), hi); gradient passes where lo ≤ x ≤ hi.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        let out = self
            .map_unary(UnaryOp::MaxScalar(lo))?
            .map_unary(UnaryOp::MinScalar(hi))?;
        let x = self.detach();
        Ok(record(out, "clamp", &[self], move || {
            Box::new(move |g, _| {
                let inside = x
                    .map_unary(UnaryOp::GeScalar(lo))?
                    .mul(&x.neg()?.map_unary(UnaryOp::GeScalar(-hi))?)?;
                Ok(vec![Some(g.mul(&inside)?)])
            })
        }))
    }

    /// A broadcasting binary op. `keep` says which of (a, b, out) the
    /// derivative reads, given which inputs need a gradient; only those are
    /// saved (x · const keeps the constant, not the activation x).
    fn binary_with_grad(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        name: &'static str,
        keep: impl Fn(bool, bool) -> [bool; 3],
        grad: impl FnOnce(&Tensor, &Saved, &[bool]) -> Result<(Option<Tensor>, Option<Tensor>)>
        + Send
        + 'static,
    ) -> Result<Tensor> {
        let out = self.map_binary(rhs, op, name)?;
        let [ka, kb, ky] = keep(self.requires_grad(), rhs.requires_grad());
        let saved = Saved {
            name,
            a: ka.then(|| self.detach()),
            b: kb.then(|| rhs.detach()),
            y: ky.then(|| out.detach()),
        };
        let (a_shape, b_shape) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(record(out, name, &[self, rhs], move || {
            Box::new(move |g, needs| {
                let (ga, gb) = grad(g, &saved, needs)?;
                Ok(vec![
                    ga.map(|t| t.sum_to(&a_shape)).transpose()?,
                    gb.map(|t| t.sum_to(&b_shape)).transpose()?,
                ])
            })
        }))
    }

    /// a + b with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(
            rhs,
            BinaryOp::Add,
            "add",
            |_, _| [false; 3],
            |g, _, n| Ok((n[0].then(|| g.clone()), n[1].then(|| g.clone()))),
        )
    }
    /// a − b with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(
            rhs,
            BinaryOp::Sub,
            "sub",
            |_, _| [false; 3],
            |g, _, n| Ok((n[0].then(|| g.clone()), when(n[1], || g.neg())?)),
        )
    }
    /// a · b with broadcasting; ∂/∂a = g·b, ∂/∂b = g·a.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        let keep = |ta: bool, tb: bool| [tb, ta, false];
        self.binary_with_grad(rhs, BinaryOp::Mul, "mul", keep, |g, s, n| {
            Ok((when(n[0], || g.mul(s.b()?))?, when(n[1], || g.mul(s.a()?))?))
        })
    }
    /// a / b with broadcasting; ∂/∂a = g/b, ∂/∂b = −g·(a/b)/b.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        let keep = |_: bool, tb: bool| [false, true, tb];
        self.binary_with_grad(rhs, BinaryOp::Div, "div", keep, |g, s, n| {
            Ok((
                when(n[0], || g.div(s.b()?))?,
                when(n[1], || g.mul(s.y()?)?.div(s.b()?)?.neg())?,
            ))
        })
    }
    /// max(a, b) elementwise; ties send the gradient to `a`.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.extremum_binary(rhs, BinaryOp::Maximum, BinaryOp::Ge, "maximum")
    }
    /// min(a, b) elementwise; ties send the gradient to `a`.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.extremum_binary(rhs, BinaryOp::Minimum, BinaryOp::Le, "minimum")
    }

    /// maximum/minimum: the gradient goes to `a` where `pick(a, b)` holds
    /// (ties included), to `b` elsewhere.
    fn extremum_binary(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        pick: BinaryOp,
        name: &'static str,
    ) -> Result<Tensor> {
        self.binary_with_grad(
            rhs,
            op,
            name,
            |_, _| [true, true, false],
            move |g, s, n| {
                let pick_a = s.a()?.map_binary(s.b()?, pick, name)?;
                Ok((
                    when(n[0], || g.mul(&pick_a))?,
                    when(n[1], || g.mul(&pick_a.affine(-1.0, 1.0)?))?,
                ))
            },
        )
    }

    // Comparisons return 0/1 tensors. They are piecewise constant, so their
    // derivative is zero almost everywhere: the result is not on the tape.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Eq, "eq")
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Ne, "ne")
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Lt, "lt")
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Le, "le")
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Gt, "gt")
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.map_binary(rhs, BinaryOp::Ge, "ge")
    }

    /// `cond ? a : b` elementwise with broadcasting (`cond` nonzero = true).
    /// The condition is not differentiated; `a` and `b` get `g` where chosen.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same("where", a, b)?;
        check_same("where", cond, a)?;
        let shape = broadcast_shapes(
            "where",
            &broadcast_shapes("where", cond.shape(), a.shape())?,
            b.shape(),
        )?;
        let lay = |t: &Tensor| -> Result<Layout> { t.layout().broadcast_to("where", &shape) };
        let (cl, al, bl) = (lay(cond)?, lay(a)?, lay(b)?);
        let st = with_storage_list(&[cond, a, b], |s| {
            s[0].where_cond(&cl, s[1], &al, s[2], &bl)
        })?;
        let out = Tensor::from_contiguous(st, &shape);
        let (c, ash, bsh) = (cond.detach(), a.shape().to_vec(), b.shape().to_vec());
        Ok(record(out, "where", &[a, b], move || {
            Box::new(move |g, n| {
                let zero = g.zeros_like()?;
                let ga = when(n[0], || Tensor::where_cond(&c, g, &zero)?.sum_to(&ash))?;
                let gb = when(n[1], || Tensor::where_cond(&c, &zero, g)?.sum_to(&bsh))?;
                Ok(vec![ga, gb])
            })
        }))
    }
}

/// Which tensor a unary op's derivative reads.
#[derive(Clone, Copy)]
enum Keep {
    Input,
    Output,
}

/// The tensors a binary op saved for its backward (see `binary_with_grad`).
struct Saved {
    name: &'static str,
    a: Option<Tensor>,
    b: Option<Tensor>,
    y: Option<Tensor>,
}

impl Saved {
    fn get<'a>(&self, t: &'a Option<Tensor>, which: &str) -> Result<&'a Tensor> {
        t.as_ref()
            .ok_or_else(|| Error::Backward(format!("'{}' did not save its {which}", self.name)))
    }
    fn a(&self) -> Result<&Tensor> {
        self.get(&self.a, "left input")
    }
    fn b(&self) -> Result<&Tensor> {
        self.get(&self.b, "right input")
    }
    fn y(&self) -> Result<&Tensor> {
        self.get(&self.y, "output")
    }
}

/// Computes a gradient only when it is needed.
pub(crate) fn when(need: bool, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if need { f().map(Some) } else { Ok(None) }
}
