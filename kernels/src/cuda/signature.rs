//! Kernel signatures read from PTX, to check every launch's arguments.
//!
//! A launcher passes its arguments as a list of [`Arg`]s, and nothing in
//! Rust's types ties that list to the kernel's C signature. A wrong order or
//! a missing argument would make the kernel read garbage. So when a module
//! is compiled, each `.entry` of its PTX is parsed into the kinds of its
//! parameters (`.u64`, `.f32`, a by-value struct of N bytes, ...), and
//! [`CudaDevice::launch`](super::CudaDevice::launch) compares the arguments
//! against them before the driver call. A mismatch is an error that names
//! the kernel and both lists.

use super::abi::{Arg, Strided};
use std::collections::HashMap;

/// The kind of one kernel parameter, as far as PTX tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// 64-bit integer or pointer (`.u64`, `.s64`, `.b64`).
    Word64,
    /// 32-bit integer (`.u32`, `.s32`, `.b32`).
    Int32,
    F32,
    F64,
    /// A struct passed by value: `.b8 name[bytes]`.
    Bytes(usize),
}

impl ParamKind {
    /// The kind an argument has.
    pub fn of(arg: &Arg) -> ParamKind {
        match arg {
            Arg::Ptr(_) | Arg::I64(_) => ParamKind::Word64,
            Arg::I32(_) | Arg::U32(_) => ParamKind::Int32,
            Arg::F32(_) => ParamKind::F32,
            Arg::Strided(_) => ParamKind::Bytes(std::mem::size_of::<Strided>()),
        }
    }

    fn parse(decl: &str) -> Option<ParamKind> {
        // e.g. ".param .u64 fill_param_0" or ".param .align 8 .b8 k_param_1[112]"
        let words: Vec<&str> = decl.split_whitespace().collect();
        if let Some(last) = words.last()
            && let Some(open) = last.find('[')
        {
            let n = last[open + 1..].trim_end_matches(']').parse().ok()?;
            return Some(ParamKind::Bytes(n));
        }
        let ty = words.get(1)?;
        Some(match *ty {
            ".u64" | ".s64" | ".b64" => ParamKind::Word64,
            ".u32" | ".s32" | ".b32" => ParamKind::Int32,
            ".f32" => ParamKind::F32,
            ".f64" => ParamKind::F64,
            _ => return None,
        })
    }
}

/// Every kernel (`.entry`) of a PTX module with its parameter kinds.
pub fn parse_entries(ptx: &str) -> HashMap<String, Vec<ParamKind>> {
    let mut out = HashMap::new();
    let mut rest = ptx;
    while let Some(i) = rest.find(".entry ") {
        rest = &rest[i + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let Some(close) = rest.find(')') else { break };
        let params = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .filter_map(ParamKind::parse)
            .collect();
        out.insert(name, params);
        rest = &rest[close..];
    }
    out
}

/// `None` when `args` fit `params`, else a message naming both lists.
pub fn mismatch(params: &[ParamKind], args: &[Arg]) -> Option<String> {
    let got: Vec<ParamKind> = args.iter().map(ParamKind::of).collect();
    (got != params).then(|| format!("the kernel takes {params:?} but the launcher passed {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "
.visible .entry fill(
	.param .u64 fill_param_0,
	.param .f32 fill_param_1,
	.param .u64 fill_param_2
)
{ ret; }
.visible .entry copy_strided(
	.param .u64 copy_strided_param_0,
	.param .align 8 .b8 copy_strided_param_1[112],
	.param .u32 copy_strided_param_2
)
{ ret; }
.visible .entry none()
{ ret; }";

    #[test]
    fn parses_scalar_pointer_and_struct_params() {
        let e = parse_entries(PTX);
        assert_eq!(
            e["fill"],
            [ParamKind::Word64, ParamKind::F32, ParamKind::Word64]
        );
        assert_eq!(
            e["copy_strided"],
            [ParamKind::Word64, ParamKind::Bytes(112), ParamKind::Int32]
        );
        assert!(e["none"].is_empty());
    }

    #[test]
    fn strided_is_the_size_the_c_struct_has() {
        // int rank; (4 bytes padding) long long offset, shape[6], strides[6]
        assert_eq!(std::mem::size_of::<Strided>(), 8 + 8 + 6 * 8 * 2);
    }

    #[test]
    fn mismatch_names_both_lists() {
        let params = [ParamKind::Word64, ParamKind::F32, ParamKind::Word64];
        assert!(mismatch(&params, &[Arg::Ptr(0), Arg::F32(1.0), Arg::I64(3)]).is_none());
        let msg = mismatch(&params, &[Arg::Ptr(0), Arg::I64(3)]).unwrap();
        assert!(
            msg.contains("[Word64, F32, Word64]") && msg.contains("[Word64, Word64]"),
            "{msg}"
        );
        assert!(mismatch(&params, &[Arg::Ptr(0), Arg::I32(1), Arg::I64(3)]).is_some());
    }
}
