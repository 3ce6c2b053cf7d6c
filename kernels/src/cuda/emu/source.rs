//! What the emulator reads from a module's CUDA text: the signature of
//! every kernel (to generate its trampoline and to check launch arguments
//! as the PTX signature check does on a GPU), and the one rewrite g++
//! needs (`extern __shared__` arrays become the scheduler's buffer).
//!
//! The kernels here have simple signatures (pointers, integers, floats,
//! `Strided` by value), so a small scanner is enough: comments are blanked,
//! each `extern "C" __global__ void NAME(PARAMS)` is found, and PARAMS is
//! split on commas outside brackets. The generated trampoline also
//! `static_assert`s that the parsed types are the kernel's real ones, so a
//! parsing mistake is a compile error, not a wrong call.

use crate::cuda::abi::Strided;
use crate::cuda::signature::ParamKind;

/// One parameter: its C type as written (e.g. `const float*`) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub ty: String,
    pub name: String,
}

/// One `extern "C" __global__` kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
}

impl Kernel {
    /// The kinds the launcher's arguments must have (see
    /// [`signature::mismatch`](crate::cuda::signature::mismatch)).
    pub fn param_kinds(&self) -> Result<Vec<ParamKind>, String> {
        self.params
            .iter()
            .map(|p| {
                param_kind(&p.ty).ok_or_else(|| {
                    format!(
                        "kernel `{}`: parameter `{}` has type `{}`, which the emulator cannot pass",
                        self.name, p.name, p.ty
                    )
                })
            })
            .collect()
    }
}

/// The argument kind of a parameter type, as PTX would declare it.
pub fn param_kind(ty: &str) -> Option<ParamKind> {
    if ty.contains('*') {
        return Some(ParamKind::Word64);
    }
    let words: Vec<&str> = ty
        .split_whitespace()
        .filter(|w| !matches!(*w, "const" | "volatile" | "__restrict__" | "__restrict"))
        .collect();
    Some(match words.join(" ").as_str() {
        "int" | "signed" | "signed int" | "unsigned" | "unsigned int" | "int32_t" | "uint32_t" => {
            ParamKind::Int32
        }
        "long long"
        | "long long int"
        | "signed long long"
        | "unsigned long long"
        | "unsigned long long int"
        | "long"
        | "unsigned long"
        | "int64_t"
        | "uint64_t"
        | "size_t" => ParamKind::Word64,
        "float" => ParamKind::F32,
        "double" => ParamKind::F64,
        "Strided" => ParamKind::Bytes(std::mem::size_of::<Strided>()),
        _ => return None,
    })
}

/// `src` with every comment replaced by spaces (newlines kept, so byte
/// offsets and line numbers stay those of the original). String and
/// character literals are left alone.
pub fn blank_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                for o in &mut out[i..end] {
                    if *o != b'\n' {
                        *o = b' ';
                    }
                }
                i = end;
            }
            (q @ (b'"' | b'\''), _) => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    // Only ASCII bytes inside comments were replaced, by ASCII spaces; a
    // multi-byte character is replaced whole, so the text stays UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `word` occurs at byte `at` of `s` as a whole identifier.
fn word_at(s: &str, at: usize, word: &str) -> bool {
    s[at..].starts_with(word)
        && !s[..at].chars().next_back().is_some_and(is_ident)
        && !s[at + word.len()..].chars().next().is_some_and(is_ident)
}

/// Byte offsets of `word` as a whole identifier in `s`.
fn find_words<'a>(s: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    s.match_indices(word)
        .map(|(i, _)| i)
        .filter(move |&i| word_at(s, i, word))
}

/// The index of the bracket closing the one at `open` (`(`, `[`, `{`, `<`).
fn closing(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `s` split on the commas that are outside any brackets.
pub fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// One declaration such as `const float* __restrict__ x` as type and name.
fn parse_param(decl: &str) -> Result<Param, String> {
    let decl = decl.split_whitespace().collect::<Vec<_>>().join(" ");
    let name_start = decl.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
    let (ty, name) = (decl[..name_start].trim(), &decl[name_start..]);
    if ty.is_empty() || name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "cannot read parameter `{decl}` (expected `TYPE NAME`)"
        ));
    }
    Ok(Param {
        ty: ty.to_string(),
        name: name.to_string(),
    })
}

/// Every `extern "C" __global__` kernel of `src`, in order. Kernels not
/// declared `extern "C"` cannot be launched by name and are skipped.
pub fn parse_kernels(src: &str) -> Result<Vec<Kernel>, String> {
    let text = blank_comments(src);
    let mut kernels = Vec::new();
    for at in find_words(&text, "__global__") {
        if !text[..at].trim_end().ends_with("extern \"C\"") {
            continue;
        }
        let mut rest = text[at + "__global__".len()..].trim_start();
        // __launch_bounds__(...) may sit before the return type.
        if let Some(after) = rest.strip_prefix("__launch_bounds__") {
            let close = after
                .find('(')
                .and_then(|open| closing(after, open))
                .ok_or("unclosed `__launch_bounds__(`")?;
            rest = after[close + 1..].trim_start();
        }
        kernels.push(parse_kernel(rest)?);
    }
    Ok(kernels)
}

/// The kernel declared at the start of `rest` (`void NAME(PARAMS)...`).
fn parse_kernel(rest: &str) -> Result<Kernel, String> {
    let open = rest
        .find('(')
        .ok_or("`__global__` without a parameter list")?;
    let head = rest[..open].trim();
    let name = head
        .strip_prefix("void")
        .filter(|n| n.starts_with(char::is_whitespace))
        .map(str::trim)
        .ok_or_else(|| format!("kernel declared `{head}`: a kernel returns void"))?;
    if name.is_empty() || !name.chars().all(is_ident) {
        return Err(format!("cannot read the kernel name in `{head}`"));
    }
    let close = closing(rest, open).ok_or_else(|| format!("kernel `{name}`: unclosed `(`"))?;
    let list = rest[open + 1..close].trim();
    let params = if list.is_empty() || list == "void" {
        Vec::new()
    } else {
        split_top_level(list)
            .into_iter()
            .map(parse_param)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("kernel `{name}`: {e}"))?
    };
    Ok(Kernel {
        name: name.to_string(),
        params,
    })
}

/// Rewrites the module's shared memory for the host:
/// - each `extern __shared__ T name[];` (dynamic shared memory, sized by
///   the launch) becomes a pointer to the scheduler's per-launch buffer: a
///   local `T* name` inside a function, a macro at file scope;
/// - after each `__shared__ T a[N], b[M];` inside a function comes
///   `EMU_POISON_SHARED(a); EMU_POISON_SHARED(b);`, which fills the arrays
///   with NaN bytes when a block first reaches them (`__shared__` is a
///   `static thread_local`, so without this a block would read what the
///   previous block left, hiding reads of memory it never wrote).
pub fn rewrite_shared(src: &str) -> Result<String, String> {
    let text = blank_comments(src);
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    for at in find_words(&text, "__shared__") {
        let end = at + text[at..].find(';').ok_or("`__shared__` without `;`")?;
        let depth = brace_depth(&text[..at]);
        let before = text[..at].trim_end();
        if let Some(ext) = before
            .strip_suffix("extern")
            .filter(|b| !b.ends_with(is_ident))
        {
            let decl = strip_alignment(&text[at + "__shared__".len()..end]);
            let decl = decl.trim();
            let array = decl
                .strip_suffix("[]")
                .ok_or_else(|| format!("`extern __shared__ {decl}`: expected an unsized array"))?;
            let Param { ty, name } = parse_param(array)?;
            out.push_str(&src[copied..ext.len()]);
            out.push_str(&if depth == 0 {
                format!("\n#define {name} (({ty}*)::emu::dynamic_shared())\n")
            } else {
                format!("{ty}* {name} = ({ty}*)::emu::dynamic_shared();")
            });
            copied = end + 1;
        } else if depth > 0 {
            out.push_str(&src[copied..=end]);
            for name in declared_names(&text[at + "__shared__".len()..end])? {
                out.push_str(&format!(" EMU_POISON_SHARED({name});"));
            }
            copied = end + 1;
        }
    }
    out.push_str(&src[copied..]);
    Ok(out)
}

/// The names declared by `T a[N], b[M]` (declarators after the first have
/// no type).
fn declared_names(decl: &str) -> Result<Vec<String>, String> {
    let decl = strip_alignment(decl);
    split_top_level(&decl)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let head = d.split('[').next().unwrap_or(d).trim();
            let name = if i == 0 {
                parse_param(head)?.name
            } else {
                head.trim_start_matches('*').trim().to_string()
            };
            if name.is_empty() || !name.chars().all(is_ident) {
                return Err(format!(
                    "cannot read the `__shared__` declaration `{}`",
                    decl.trim()
                ));
            }
            Ok(name)
        })
        .collect()
}

/// `decl` without `__align__(N)` / `alignas(N)` (the buffer is 256-aligned).
fn strip_alignment(decl: &str) -> String {
    let mut s = decl.to_string();
    for word in ["__align__", "alignas"] {
        while let Some(i) = s.find(word) {
            let open = i + s[i..].find('(').unwrap_or(word.len());
            let close = closing(&s, open).unwrap_or(s.len() - 1);
            s.replace_range(i..=close, " ");
        }
    }
    s
}

fn brace_depth(s: &str) -> i32 {
    s.chars().fold(0, |d, c| match c {
        '{' => d + 1,
        '}' => d - 1,
        _ => d,
    })
}

/// The C++ that follows the module text: `emu_launch`, which maps a kernel
/// name to a call of that kernel by every emulated thread, with argument
/// `i` read from `args[i]` (a pointer to the value, as `cuLaunchKernel`
/// takes them), and `emu_last_error`.
pub fn trampolines(kernels: &[Kernel]) -> String {
    let mut s = String::from(
        "\nextern \"C\" __attribute__((visibility(\"default\"))) int emu_launch(\n    \
         const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,\n    \
         unsigned bz, unsigned smem, void** args) {\n    \
         const dim3 grid(gx, gy, gz), block(bx, by, bz);\n    (void)args;\n",
    );
    for k in kernels {
        s.push_str(&trampoline(k));
    }
    s.push_str(
        "    return ::emu::kUnknownKernel;\n}\n\n\
         extern \"C\" __attribute__((visibility(\"default\"))) const char* emu_last_error() {\n    \
         return ::emu::last_error();\n}\n",
    );
    s
}

/// The `if` of [`trampolines`] that launches kernel `k`.
pub fn trampoline(k: &Kernel) -> String {
    let types: Vec<&str> = k.params.iter().map(|p| p.ty.as_str()).collect();
    let args: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("*({ty}*)args[{i}]"))
        .collect();
    let name = &k.name;
    format!(
        "    if (!std::strcmp(name, \"{name}\")) {{\n        \
         static_assert(std::is_same_v<decltype(&{name}), void (*)({types})>,\n                      \
         \"emulator: the parsed signature of `{name}` is not its declaration\");\n        \
         return ::emu::launch(\"{name}\", grid, block, smem, [&] {{ {name}({args}); }});\n    }}\n",
        types = types.join(", "),
        args = args.join(", "),
    )
}

/// Test support for every CUDA launcher file: panics unless the named
/// arguments a launcher builds match the `.cu` signature of `kernel` in
/// `src` (names, order, kinds). The source is read by the emulator's C
/// parser (this module), the one reader of `.cu` signatures; at run time
/// [`mismatch`](crate::cuda::signature::mismatch) checks the kinds again
/// against the PTX.
#[cfg(test)]
pub(crate) fn assert_launcher_matches(src: &str, kernel: &str, params: &[crate::cuda::abi::Param]) {
    let kernels = parse_kernels(src).unwrap_or_else(|e| panic!("{e}"));
    let k = kernels
        .iter()
        .find(|k| k.name == kernel)
        .unwrap_or_else(|| panic!("kernel `{kernel}` not found"));
    let kinds = k.param_kinds().unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<(&str, ParamKind)> = k
        .params
        .iter()
        .map(|p| p.name.as_str())
        .zip(kinds)
        .collect();
    let got: Vec<(&str, ParamKind)> = params.iter().map(|p| (p.0, ParamKind::of(&p.1))).collect();
    assert_eq!(
        got, want,
        "launcher arguments of `{kernel}` differ from its .cu signature"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
// extern "C" __global__ void commented_out(int x) {}
/* extern "C" __global__ void also_commented(int x) {} */
__device__ float helper(float x, float y) { return x + y; }
extern "C" __global__ void fill(float* y, float value, long long n) {
    GRID_STRIDE(i, n) y[i] = value;
}
extern "C" __global__ void copy_into(const float* x, Strided xs,
                                     float*   y, Strided ys,
                                     long long n) {}
extern "C" __global__ void philox(float* y, unsigned seed, unsigned long long first,
                                  const double* __restrict__ partials, int normal) {}
extern "C" __global__ void none() {}
template <int N> __global__ void templated(float* y) {}
extern "C" __global__ __launch_bounds__(256, 2) void bounded(const unsigned* ids, double d) {}
extern "C" __global__ void after_bounds(int a) {}
"#;

    fn p(ty: &str, name: &str) -> Param {
        Param {
            ty: ty.into(),
            name: name.into(),
        }
    }

    #[test]
    fn parses_every_extern_c_kernel_and_its_parameters() {
        let k = parse_kernels(SRC).unwrap();
        let names: Vec<&str> = k.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fill",
                "copy_into",
                "philox",
                "none",
                "bounded",
                "after_bounds"
            ]
        );
        assert_eq!(
            k[0].params,
            [p("float*", "y"), p("float", "value"), p("long long", "n")]
        );
        assert_eq!(
            k[1].params,
            [
                p("const float*", "x"),
                p("Strided", "xs"),
                p("float*", "y"),
                p("Strided", "ys"),
                p("long long", "n")
            ]
        );
        assert_eq!(k[2].params[2], p("unsigned long long", "first"));
        assert_eq!(k[2].params[3], p("const double* __restrict__", "partials"));
        assert!(k[3].params.is_empty());
        assert_eq!(k[4].params, [p("const unsigned*", "ids"), p("double", "d")]);
    }

    #[test]
    fn parameter_kinds_match_what_ptx_declares() {
        let k = parse_kernels(SRC).unwrap();
        use ParamKind::*;
        let strided = Bytes(std::mem::size_of::<Strided>());
        assert_eq!(k[0].param_kinds().unwrap(), [Word64, F32, Word64]);
        assert_eq!(
            k[1].param_kinds().unwrap(),
            [Word64, strided, Word64, strided, Word64]
        );
        assert_eq!(
            k[2].param_kinds().unwrap(),
            [Word64, Int32, Word64, Word64, Int32]
        );
        let bad = Kernel {
            name: "k".into(),
            params: vec![p("bool", "flag")],
        };
        let err = bad.param_kinds().unwrap_err();
        assert!(err.contains("`flag`") && err.contains("`bool`"), "{err}");
    }

    #[test]
    fn every_real_module_parses_with_passable_types() {
        for (module, _) in crate::cuda::sources::SOURCES {
            let src = crate::cuda::sources::source(module).unwrap();
            let kernels = parse_kernels(&src).unwrap_or_else(|e| panic!("{module}: {e}"));
            for k in &kernels {
                k.param_kinds().unwrap_or_else(|e| panic!("{module}: {e}"));
            }
        }
    }

    /// Where libnvrtc is present (CI), the kinds read from the C text are
    /// the ones NVRTC's PTX declares, kernel for kernel: the emulator checks
    /// launches exactly as a GPU does.
    #[test]
    fn kinds_agree_with_the_ptx_signatures() {
        use crate::cuda::compile::{compile_module, nvrtc_available};
        if !nvrtc_available() {
            eprintln!("kinds_agree_with_the_ptx_signatures: SKIPPED (libnvrtc not found)");
            return;
        }
        for (module, _) in crate::cuda::sources::SOURCES {
            let src = crate::cuda::sources::source(module).unwrap();
            let ptx = compile_module(module, &src, "sm_90").unwrap().to_src();
            let entries = crate::cuda::signature::parse_entries(&ptx);
            let kernels = parse_kernels(&src).unwrap();
            assert_eq!(kernels.len(), entries.len(), "{module}: kernel count");
            for k in &kernels {
                assert_eq!(
                    k.param_kinds().unwrap(),
                    entries[&k.name],
                    "{module}::{}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn bad_declarations_are_errors() {
        assert!(parse_kernels("extern \"C\" __global__ int k(int a) {}").is_err());
        assert!(parse_kernels("extern \"C\" __global__ void k(int) {}").is_err());
        assert!(parse_kernels("extern \"C\" __global__ void k(int a {}").is_err());
    }

    #[test]
    fn trampoline_reads_each_argument_through_its_pointer() {
        let k = &parse_kernels(SRC).unwrap()[0];
        let t = trampoline(k);
        assert!(t.contains("!std::strcmp(name, \"fill\")"), "{t}");
        assert!(
            t.contains("fill(*(float**)args[0], *(float*)args[1], *(long long*)args[2]);"),
            "{t}"
        );
        assert!(t.contains("void (*)(float*, float, long long)"), "{t}");
        let all = trampolines(&parse_kernels(SRC).unwrap());
        assert!(all.contains("int emu_launch(") && all.contains("kUnknownKernel"));
        assert!(all.contains("none(); });"), "{all}");
    }

    #[test]
    fn dynamic_shared_memory_becomes_the_scheduler_buffer() {
        let src = "extern __shared__ float tile[];\n\
                   __global__ void k() {\n    extern __shared__ __align__(16) double buf[];\n}\n\
                   // extern __shared__ int commented[];\n";
        let out = rewrite_shared(src).unwrap();
        assert!(
            out.contains("#define tile ((float*)::emu::dynamic_shared())"),
            "{out}"
        );
        assert!(
            out.contains("double* buf = (double*)::emu::dynamic_shared();"),
            "{out}"
        );
        assert!(
            out.contains("// extern __shared__ int commented[];"),
            "{out}"
        );
        assert!(rewrite_shared("extern __shared__ float s[4];").is_err());
    }

    #[test]
    fn static_shared_arrays_are_poisoned_per_block() {
        let src = "__shared__ float global_tile[8];\n\
                   __global__ void k() {\n    __shared__ double scratch[32];\n    \
                   __shared__ __align__(16) float a[4][4], b[2];\n}\n";
        let out = rewrite_shared(src).unwrap();
        assert!(
            out.contains("__shared__ double scratch[32]; EMU_POISON_SHARED(scratch);"),
            "{out}"
        );
        assert!(
            out.contains("b[2]; EMU_POISON_SHARED(a); EMU_POISON_SHARED(b);"),
            "{out}"
        );
        // File scope takes no statement: left as it is.
        assert!(
            out.starts_with("__shared__ float global_tile[8];\n"),
            "{out}"
        );
    }

    #[test]
    fn comments_are_blanked_but_strings_kept() {
        let s = "a // x\nb /* y\nz */ c \"// not a comment\"";
        let out = blank_comments(s);
        assert_eq!(out.len(), s.len());
        assert_eq!(out.lines().count(), s.lines().count());
        assert!(out.contains("\"// not a comment\""));
        assert!(!out.contains('x') && !out.contains('y') && !out.contains('z'));
    }

    #[test]
    fn top_level_split_ignores_nested_commas() {
        assert_eq!(
            split_top_level("int a, Foo<int, 2> b, float c"),
            ["int a", " Foo<int, 2> b", " float c"]
        );
    }
}
