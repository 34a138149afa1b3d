//! `nonstop where` says for each address whether the fast path would take it, and why not:
//! a static program assembled from the source below (exact addresses, `-no-pie`), its
//! functions sized by `.size` except `nosize`, whose bounds are unknown.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAM: &str = "\
	.text
	.globl _start
	.type _start,@function
_start:
	call safe
	call branchy
	call nosize
	mov $60, %eax
	xor %edi, %edi
	syscall
	.size _start, .-_start

	.globl safe
	.type safe,@function
safe:
	push %rbp
	mov %rsp, %rbp              # safe body
	mov $1, %eax
	pop %rbp
	ret                         # safe end
	.size safe, .-safe

	.globl branchy
	.type branchy,@function
branchy:
	mov $3, %ecx
	xor %eax, %eax              # before the loop
1:	add %ecx, %eax              # loop head
	dec %ecx
	jnz 1b
	ret
	.size branchy, .-branchy

	.globl nosize
	.type nosize,@function
nosize:
	mov $2, %eax                # unsized
	add $3, %eax
	ret
";

/// Assembles and links the program; returns (binary, source).
fn build() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("where-fast-path");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("sites.s");
    std::fs::write(&src, PROGRAM).unwrap();
    let bin = dir.join("sites");
    let ok = Command::new("cc")
        .args(["-g", "-nostdlib", "-static", "-no-pie", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "assembling the program failed");
    (bin, src)
}

/// The line of `marker` in the source, 1-based.
fn line_of(marker: &str) -> usize {
    PROGRAM.lines().position(|l| l.contains(marker)).unwrap() + 1
}

fn nonstop_where(bin: &Path, marker: &str, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nonstop"));
    cmd.arg("where")
        .arg(bin)
        .arg(format!("sites.s:{}", line_of(marker)));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn where_says_yes_or_why_not_for_each_site() {
    let (bin, src) = build();
    let src = src.display();
    let no_vars = |f: &str, at: &str| {
        format!(
            "  variables: {f} (at {at}) has no variable info: it was built with line tables only; \
             build with `debug = true` (Cargo.toml: [profile.release] debug = true) to see variables\n"
        )
    };
    // The loop's `jnz` lands on the `add`, inside the 5 bytes a jmp at the `xor` covers.
    assert_eq!(
        nonstop_where(&bin, "before the loop", false),
        format!(
            "0x401028 {src}:{}\n  in branchy\n  fast path: no — a branch at 0x40102e lands \
             inside the patched bytes (at 0x40102a)\n{}",
            line_of("before the loop"),
            no_vars("branchy", "0x401028")
        )
    );
    // At the `add` itself the jump lands on the jmp's first byte: taken.
    assert_eq!(
        nonstop_where(&bin, "loop head", false),
        format!(
            "0x40102a {src}:{}\n  in branchy\n  fast path: yes\n{}",
            line_of("loop head"),
            no_vars("branchy", "0x40102a")
        )
    );

    let fast_path = |marker: &str| {
        let json: serde_json::Value =
            serde_json::from_str(&nonstop_where(&bin, marker, true)).unwrap();
        let sites = json["sites"].as_array().unwrap();
        assert_eq!(sites.len(), 1, "{json}");
        (
            sites[0]["address"].as_str().unwrap().to_string(),
            sites[0]["fast_path"].as_str().unwrap().to_string(),
        )
    };
    let pair = |a: &str, f: &str| (a.to_string(), f.to_string());
    assert_eq!(fast_path("safe body"), pair("0x401019", "yes"));
    assert_eq!(
        fast_path("safe end"),
        pair("0x401022", "the function ends inside the 5 patched bytes")
    );
    assert_eq!(
        fast_path("unsized"),
        pair("0x401031", "the function's bounds are unknown")
    );
    assert_eq!(
        fast_path("before the loop"),
        pair(
            "0x401028",
            "a branch at 0x40102e lands inside the patched bytes (at 0x40102a)"
        )
    );
}
