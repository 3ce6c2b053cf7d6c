//! Unary and broadcasting binary ops, scalar ops, comparisons and `where`.

use super::{check_same, with_storages};
use crate::autograd::record;
use crate::error::Result;
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

    fn unary_with_grad(
        &self,
        op: UnaryOp,
        name: &'static str,
        grad: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Result<Tensor> {
        let out = self.map_unary(op)?;
        let (x, y) = (self.detach(), out.detach());
        Ok(record(out, name, &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(grad(g, &x, &y)?)]))
        }))
    }

    /// −x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Neg, "neg", |g, _, _| g.neg())
    }
    /// eˣ; d/dx = eˣ (reuses the output).
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Exp, "exp", |g, _, y| g.mul(y))
    }
    /// ln x; d/dx = 1/x.
    pub fn log(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Log, "log", |g, x, _| g.div(x))
    }
    /// √x; d/dx = 1/(2√x).
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sqrt, "sqrt", |g, _, y| g.div(y)?.mul_scalar(0.5))
    }
    /// x²; d/dx = 2x.
    pub fn square(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sqr, "square", |g, x, _| g.mul(x)?.mul_scalar(2.0))
    }
    /// xᵉ; d/dx = e·xᵉ⁻¹.
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Powf(e), "powf", move |g, x, _| {
            g.mul(&x.map_unary(UnaryOp::Powf(e - 1.0))?)?.mul_scalar(e)
        })
    }
    /// |x|; d/dx = sign(x) (0 at 0, as PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Abs, "abs", |g, x, _| {
            g.mul(&x.map_unary(UnaryOp::Sign)?)
        })
    }
    /// 1/x; d/dx = −1/x².
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Recip, "recip", |g, _, y| {
            g.mul(&y.square()?)?.neg()
        })
    }
    /// σ(x) = 1/(1+e⁻ˣ); backward fused in one kernel.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Sigmoid, "sigmoid", |g, x, _| {
            x.map_binary(g, BinaryOp::SigmoidBackward, "sigmoid_backward")
        })
    }
    /// SiLU x·σ(x); backward σ(x)(1 + x(1−σ(x))) fused in one kernel.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Silu, "silu", |g, x, _| {
            x.map_binary(g, BinaryOp::SiluBackward, "silu_backward")
        })
    }
    /// tanh x; d/dx = 1 − tanh²x.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Tanh, "tanh", |g, x, _| {
            x.map_binary(g, BinaryOp::TanhBackward, "tanh_backward")
        })
    }
    /// max(x, 0); d/dx = 1[x > 0].
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Relu, "relu", |g, x, _| {
            x.map_binary(g, BinaryOp::ReluBackward, "relu_backward")
        })
    }
    /// x·mul + add in one pass; d/dx = mul.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary_with_grad(UnaryOp::Affine { mul, add }, "affine", move |g, _, _| {
            g.mul_scalar(mul)
        })
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

    fn binary_with_grad(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        name: &'static str,
        grad: impl FnOnce(
            &Tensor,
            &Tensor,
            &Tensor,
            &Tensor,
            &[bool],
        ) -> Result<(Option<Tensor>, Option<Tensor>)>
        + Send
        + 'static,
    ) -> Result<Tensor> {
        let out = self.map_binary(rhs, op, name)?;
        let (a, b, y) = (self.detach(), rhs.detach(), out.detach());
        Ok(record(out, name, &[self, rhs], move || {
            Box::new(move |g, needs| {
                let (ga, gb) = grad(g, &a, &b, &y, needs)?;
                Ok(vec![
                    ga.map(|t| t.sum_to(a.shape())).transpose()?,
                    gb.map(|t| t.sum_to(b.shape())).transpose()?,
                ])
            })
        }))
    }

    /// a + b with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Add, "add", |g, _, _, _, n| {
            Ok((n[0].then(|| g.clone()), n[1].then(|| g.clone())))
        })
    }
    /// a − b with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Sub, "sub", |g, _, _, _, n| {
            Ok((n[0].then(|| g.clone()), when(n[1], || g.neg())?))
        })
    }
    /// a · b with broadcasting; ∂/∂a = g·b, ∂/∂b = g·a.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Mul, "mul", |g, a, b, _, n| {
            Ok((when(n[0], || g.mul(b))?, when(n[1], || g.mul(a))?))
        })
    }
    /// a / b with broadcasting; ∂/∂a = g/b, ∂/∂b = −g·(a/b)/b.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Div, "div", |g, _, b, y, n| {
            Ok((
                when(n[0], || g.div(b))?,
                when(n[1], || g.mul(y)?.div(b)?.neg())?,
            ))
        })
    }
    /// max(a, b) elementwise; ties send the gradient to `a`.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Maximum, "maximum", |g, a, b, _, n| {
            let pick_a = a.map_binary(b, BinaryOp::Ge, "maximum_backward")?;
            Ok((
                when(n[0], || g.mul(&pick_a))?,
                when(n[1], || g.mul(&pick_a.affine(-1.0, 1.0)?))?,
            ))
        })
    }
    /// min(a, b) elementwise; ties send the gradient to `a`.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_with_grad(rhs, BinaryOp::Minimum, "minimum", |g, a, b, _, n| {
            let pick_a = a.map_binary(b, BinaryOp::Le, "minimum_backward")?;
            Ok((
                when(n[0], || g.mul(&pick_a))?,
                when(n[1], || g.mul(&pick_a.affine(-1.0, 1.0)?))?,
            ))
        })
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
        let st = {
            let (cs, as_, bs) = (cond.storage(), a.storage(), b.storage());
            cs.where_cond(&cl, &as_, &al, &bs, &bl)?
        };
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

/// Computes a gradient only when it is needed.
pub(crate) fn when(need: bool, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if need { f().map(Some) } else { Ok(None) }
}
