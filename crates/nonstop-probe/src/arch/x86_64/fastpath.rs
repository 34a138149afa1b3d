//! The fast path: a 5-byte `jmp` to a per-probe trampoline instead of an `int3`, where a
//! whole-function decode proves it safe; the trampoline's code.
//!
//! # The safety check ([`analyze`])
//!
//! The `jmp` overwrites the *span*: the whole instructions from the probe address that
//! cover 5 bytes. Execution may enter the span only at its first byte, so the check decodes
//! the whole function (its bounds come from the caller: symbols or CFI) and refuses when
//! - an instruction cannot be decoded, or one in the span may not be probed at all;
//! - a direct branch or call anywhere in the function targets a byte of the span other
//!   than its first, or a RIP-relative operand takes the address of one (a computed target);
//! - the span holds more than one instruction and the function has an indirect jump (a
//!   jump table could land on an instruction inside the span; a span of one instruction
//!   has none to land on); a tail call through a RIP-relative pointer (`jmp [rip+x]`, no
//!   index) is not one;
//! - an instruction inside the span follows one that does not fall through (`jmp`, `ret`,
//!   `ud2`): it is reached by some jump we cannot see, e.g. an exception landing pad;
//! - the span holds a call other than as its last instruction (its return address would
//!   point inside the patched bytes);
//! - the span runs past the function's end;
//! - the relocated copy does not reach the same RIP-relative addresses (checked when the
//!   trampoline is built, [`trampoline_code`]).
//!
//! Not seen by the check, so the caller must exclude it: code outside the bounds that
//! jumps into the function's middle (GCC's `.cold` parts).
//!
//! # The trampoline ([`trampoline_code`])
//!
//! ```text
//! lea rsp, [rsp-128]          ; skip the red zone
//! pushfq; push rax..r15       ; the frame (FastFrame), rsp not pushed
//! mov rbx, rsp                ; callee-saved: the frame
//! sub rsp, AREA; and rsp, -64; cld
//! mov rdi, rsp; call SAVE     ; the vector registers and MXCSR (VectorState: Rust code and
//!                             ; libc routines called by the hit may clobber them)
//! mov rdi, rbx; mov rsi, ADDR; mov rdx, rsp; mov ecx, STRIDE; mov rax, HIT; call rax
//! mov rdi, rsp; call RESTORE
//! mov rsp, rbx; pop r15..rax; popfq; lea rsp, [rsp+128]
//! DISPLACED:                  ; the int3 path resumes here mid-patch
//! the span's instructions relocated (a trailing call as push [orig return]; jmp target)
//! jmp ADDR+SPAN
//! ```

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionBlock, MemoryOperand, Mnemonic, OpKind, Register,
};

use super::site;

/// Bytes of the `jmp rel32` patched over the span.
pub const JMP_LEN: usize = 5;
/// Bytes of one trampoline.
pub const TRAMPOLINE_SIZE: usize = 256;
/// The last 8 bytes of a trampoline hold the original return address of a trailing call.
const CONST_AT: usize = TRAMPOLINE_SIZE - 8;

/// The registers the trampoline saves, in memory order (the last push is at the lowest
/// address). `rsp` before the trampoline is `frame + size_of::<FastFrame>() + 128`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FastFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub rflags: u64,
}

/// Bytes between the frame and the interrupted stack pointer: the pushes and the red zone.
pub const FRAME_TO_RSP: u64 = std::mem::size_of::<FastFrame>() as u64 + 128;

/// Why a site does not get the fast path. `Display` completes "fast path: no — …".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FastRefusal {
    /// The agent runs with `NONSTOP_FAST_PATH=0`.
    Off,
    /// The caller did not give the function's bounds.
    BoundsUnknown,
    /// The probe address is not an instruction of the function as decoded from its start.
    NotAnInstruction,
    /// An instruction of the function cannot be decoded.
    Undecodable {
        /// The instruction's address.
        at: u64,
    },
    /// The function ends within 5 bytes of the probe.
    SpanPastEnd,
    /// A direct branch or call lands inside the span.
    BranchIntoSpan {
        /// The instruction's address.
        from: u64,
        /// The address inside the span.
        to: u64,
    },
    /// A RIP-relative operand takes an address inside the span.
    AddressIntoSpan {
        /// The instruction's address.
        from: u64,
        /// The address inside the span.
        to: u64,
    },
    /// The function has an indirect jump.
    IndirectJump {
        /// The instruction's address.
        at: u64,
    },
    /// An instruction in the span is reached only by jumps (it follows one that does not
    /// fall through).
    JoinInSpan {
        /// The instruction's address.
        at: u64,
    },
    /// A call in the span is not its last instruction.
    CallInSpan {
        /// The instruction's address.
        at: u64,
    },
    /// An instruction in the span may not be probed.
    Unsupported {
        /// The instruction's address.
        at: u64,
        /// Why, for a person.
        reason: &'static str,
    },
    /// The relocated copy would not reach the same RIP-relative address (or could not be
    /// encoded).
    Relocation {
        /// The instruction's address.
        at: u64,
    },
    /// No address space for a trampoline within ±2 GB.
    NoTrampolineNearby,
    /// Another probe is armed inside the span.
    ProbeInSpan {
        /// The instruction's address.
        at: u64,
    },
    /// A thread was paused inside the span when it was to be patched.
    ThreadInSpan,
    /// The CPU has register state the trampoline does not save (APX).
    CpuState,
    /// Writing the patch failed.
    Patch,
}

impl std::fmt::Display for FastRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use FastRefusal::*;
        match *self {
            Off => write!(f, "off (NONSTOP_FAST_PATH=0)"),
            BoundsUnknown => write!(f, "the function's bounds are unknown"),
            NotAnInstruction => write!(
                f,
                "the address is not an instruction of the function decoded from its start"
            ),
            Undecodable { at } => write!(f, "the bytes at {at:#x} do not decode"),
            SpanPastEnd => write!(f, "the function ends inside the 5 patched bytes"),
            BranchIntoSpan { from, to } => write!(
                f,
                "a branch at {from:#x} lands inside the patched bytes (at {to:#x})"
            ),
            AddressIntoSpan { from, to } => write!(
                f,
                "the instruction at {from:#x} takes an address inside the patched bytes ({to:#x})"
            ),
            IndirectJump { at } => write!(
                f,
                "the function has an indirect jump at {at:#x} (a jump table could land inside the patched bytes)"
            ),
            JoinInSpan { at } => write!(
                f,
                "the instruction at {at:#x} inside the patched bytes is reached only by a jump (a landing pad?)"
            ),
            CallInSpan { at } => write!(
                f,
                "the call at {at:#x} would return inside the patched bytes"
            ),
            Unsupported { at, reason } => {
                write!(f, "the instruction at {at:#x} cannot be moved ({reason})")
            }
            Relocation { at } => write!(
                f,
                "the RIP-relative instruction at {at:#x} cannot be relocated to the trampoline"
            ),
            NoTrampolineNearby => write!(f, "no address space for a trampoline within ±2 GB"),
            ProbeInSpan { at } => write!(f, "another probe at {at:#x} is inside the patched bytes"),
            ThreadInSpan => write!(f, "a thread was paused inside the patched bytes"),
            CpuState => write!(
                f,
                "the CPU has registers the trampoline does not save (APX)"
            ),
            Patch => write!(f, "writing the jump failed"),
        }
    }
}

/// A site that passed the check: the span's instructions and original bytes.
#[derive(Debug, Clone)]
pub struct FastSite {
    /// The probe address.
    pub addr: u64,
    /// The span's instructions (whole instructions covering at least 5 bytes).
    pub instrs: Vec<Instruction>,
    /// The span's original bytes.
    pub orig: Vec<u8>,
}

impl FastSite {
    /// Bytes of the span.
    pub fn span_len(&self) -> usize {
        self.orig.len()
    }

    /// The bytes patched over the span: `jmp rel32` to `tramp`, then `int3`s (never
    /// executed: nothing enters the span but at its start).
    pub fn patch_bytes(&self, tramp: u64) -> Vec<u8> {
        let rel = tramp.wrapping_sub(self.addr + JMP_LEN as u64) as i64;
        let mut out = vec![0xcc; self.span_len()];
        out[0] = 0xe9;
        out[1..5].copy_from_slice(&(rel as i32).to_le_bytes());
        out
    }

    /// Whether `addr` is inside the span (after its first byte).
    pub fn interior(&self, addr: u64) -> bool {
        addr > self.addr && addr < self.addr + self.span_len() as u64
    }
}

/// The largest function the check decodes (bigger bounds are taken for wrong ones).
const MAX_FUNCTION_LEN: u64 = 1 << 24;

/// The function's bounds as the check takes them: given, holding `address`, at most
/// 16 MiB long.
pub fn check_bounds(
    address: u64,
    function: Option<&std::ops::Range<u64>>,
) -> Result<std::ops::Range<u64>, FastRefusal> {
    let f = function.ok_or(FastRefusal::BoundsUnknown)?;
    if !(f.start <= address && address < f.end) || f.end - f.start > MAX_FUNCTION_LEN {
        return Err(FastRefusal::BoundsUnknown);
    }
    Ok(f.clone())
}

/// The check the engine runs before it patches a site, on the function's bytes as in the
/// file (`func`, from `function.start`; `nonstop where`): `Ok` with the number of bytes the
/// `jmp` would cover. What it cannot know from the file the engine refuses when it arms:
/// another probe inside the span, a relocation the trampoline's place does not allow, no
/// trampoline within ±2 GB, registers the trampoline does not save, a call in the span under a CET shadow stack, a thread
/// paused in the span.
pub fn check_in_file(
    address: u64,
    function: Option<&std::ops::Range<u64>>,
    func: &[u8],
) -> Result<usize, FastRefusal> {
    let f = check_bounds(address, function)?;
    if func.len() as u64 != f.end - f.start {
        return Err(FastRefusal::BoundsUnknown);
    }
    Ok(analyze(address, f.start, func)?.span_len())
}

/// The safety check (see the module doc): `func` holds the function's original bytes from
/// `func_start` (other probes' bytes already replaced by the originals).
pub fn analyze(addr: u64, func_start: u64, func: &[u8]) -> Result<FastSite, FastRefusal> {
    let mut decoder = Decoder::with_ip(64, func, func_start, DecoderOptions::NONE);
    let mut instrs = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return Err(FastRefusal::Undecodable { at: ins.ip() });
        }
        instrs.push(ins);
    }
    let first = instrs
        .iter()
        .position(|i| i.ip() == addr)
        .ok_or(FastRefusal::NotAnInstruction)?;
    let mut last = first;
    while instrs[last].next_ip() < addr + JMP_LEN as u64 {
        last += 1;
        if last >= instrs.len() {
            return Err(FastRefusal::SpanPastEnd);
        }
    }
    let span = &instrs[first..=last];
    let end = span[span.len() - 1].next_ip();
    let inside = |a: u64| a > addr && a < end;
    // An indirect jump (a jump table's) lands where an instruction starts. A span of one
    // instruction has no such place after its first byte, so only a span of several must
    // not share its function with one.
    let interior_starts = span.len() > 1;
    for ins in &instrs {
        let from = ins.ip();
        match ins.flow_control() {
            FlowControl::IndirectBranch if interior_starts => {
                let got_tail_call = ins.op0_kind() == OpKind::Memory
                    && ins.is_ip_rel_memory_operand()
                    && ins.memory_index() == Register::None;
                if !got_tail_call {
                    return Err(FastRefusal::IndirectJump { at: from });
                }
            }
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend
                if matches!(
                    ins.op0_kind(),
                    OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
                ) && inside(ins.near_branch_target()) =>
            {
                return Err(FastRefusal::BranchIntoSpan {
                    from,
                    to: ins.near_branch_target(),
                });
            }
            _ => {}
        }
        if ins.is_ip_rel_memory_operand() && inside(ins.ip_rel_memory_address()) {
            return Err(FastRefusal::AddressIntoSpan {
                from,
                to: ins.ip_rel_memory_address(),
            });
        }
    }
    for (k, ins) in span.iter().enumerate() {
        let at = ins.ip();
        let mut bytes = [0u8; 16];
        let off = (at - func_start) as usize;
        let n = ins.len();
        bytes[..n].copy_from_slice(&func[off..off + n]);
        if let Err(e) = site::analyze(at, &bytes[..n]) {
            let reason = match e {
                site::SiteError::Unsupported { reason, .. } => reason,
                _ => "it cannot run out of line",
            };
            return Err(FastRefusal::Unsupported { at, reason });
        }
        let is_call = ins.is_call_near() || ins.is_call_near_indirect();
        if is_call && k + 1 < span.len() {
            return Err(FastRefusal::CallInSpan { at });
        }
        if is_call
            && ins.is_call_near_indirect()
            && ins.op0_kind() == OpKind::Memory
            && ins.memory_index() == Register::RSP
        {
            return Err(FastRefusal::Unsupported {
                at,
                reason: "an indirect call indexed by the stack pointer",
            });
        }
        if k > 0 {
            let prev = &span[k - 1];
            let falls_through = !matches!(
                prev.flow_control(),
                FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
                    | FlowControl::Return
                    | FlowControl::Exception
                    | FlowControl::Interrupt
            ) && prev.mnemonic() != Mnemonic::Ud2;
            if !falls_through {
                return Err(FastRefusal::JoinInSpan { at });
            }
        }
    }
    let lo = (addr - func_start) as usize;
    let hi = (end - func_start) as usize;
    Ok(FastSite {
        addr,
        instrs: span.to_vec(),
        orig: func[lo..hi].to_vec(),
    })
}

/// The trampoline's code for `site` placed at `tramp`, and the offset of its displaced
/// instructions (where the `int3` path resumes a thread that trapped mid-patch).
///
/// `hit` is `extern "C" fn(frame: *mut FastFrame, addr: u64, vectors: *mut u8, stride: u32)`;
/// `vectors` says how the vector registers are saved around it.
pub fn trampoline_code(
    site: &FastSite,
    tramp: u64,
    hit: u64,
    vectors: VectorSave,
) -> Result<([u8; TRAMPOLINE_SIZE], usize), FastRefusal> {
    let area = vectors.state.area();
    let mut c: Vec<u8> = Vec::with_capacity(TRAMPOLINE_SIZE);
    c.extend_from_slice(&[0x48, 0x8d, 0x64, 0x24, 0x80]); // lea rsp, [rsp-128]
    c.push(0x9c); // pushfq
    c.extend_from_slice(&[0x50, 0x51, 0x52, 0x53, 0x55, 0x56, 0x57]); // rax rcx rdx rbx rbp rsi rdi
    for r in 0..8u8 {
        c.extend_from_slice(&[0x41, 0x50 + r]); // r8..r15
    }
    c.extend_from_slice(&[0x48, 0x89, 0xe3]); // mov rbx, rsp
    c.extend_from_slice(&[0x48, 0x81, 0xec]); // sub rsp, imm32
    c.extend_from_slice(&area.to_le_bytes());
    c.extend_from_slice(&[0x48, 0x83, 0xe4, 0xc0]); // and rsp, -64
    // The probed code may run with DF set (between `std` and `cld`); popfq restores it.
    c.push(0xfc); // cld
    let call_abs = |c: &mut Vec<u8>, f: u64| {
        c.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
        c.extend_from_slice(&f.to_le_bytes());
        c.extend_from_slice(&[0xff, 0xd0]); // call rax
    };
    c.extend_from_slice(&[0x48, 0x89, 0xe7]); // mov rdi, rsp
    call_abs(&mut c, vectors.save);
    c.extend_from_slice(&[0x48, 0x89, 0xdf]); // mov rdi, rbx
    c.extend_from_slice(&[0x48, 0xbe]); // mov rsi, imm64
    c.extend_from_slice(&site.addr.to_le_bytes());
    c.extend_from_slice(&[0x48, 0x89, 0xe2]); // mov rdx, rsp
    c.push(0xb9); // mov ecx, imm32
    c.extend_from_slice(&vectors.state.stride().to_le_bytes());
    call_abs(&mut c, hit);
    c.extend_from_slice(&[0x48, 0x89, 0xe7]); // mov rdi, rsp
    call_abs(&mut c, vectors.restore);
    c.extend_from_slice(&[0x48, 0x89, 0xdc]); // mov rsp, rbx
    for r in (0..8u8).rev() {
        c.extend_from_slice(&[0x41, 0x58 + r]); // pop r15..r8
    }
    c.extend_from_slice(&[0x5f, 0x5e, 0x5d, 0x5b, 0x5a, 0x59, 0x58]); // rdi rsi rbp rbx rdx rcx rax
    c.push(0x9d); // popfq
    c.extend_from_slice(&[0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00]); // lea rsp, [rsp+128]
    let displaced_at = c.len();

    let const_addr = tramp + CONST_AT as u64;
    let back_to = site.addr + site.span_len() as u64;
    let mut block = Vec::new();
    let mut expected_rip_rel = Vec::new();
    let n = site.instrs.len();
    let mut return_address = None;
    for (k, ins) in site.instrs.iter().enumerate() {
        let is_call = ins.is_call_near() || ins.is_call_near_indirect();
        if is_call && k + 1 == n {
            return_address = Some(ins.next_ip());
            let fail = FastRefusal::Unsupported {
                at: ins.ip(),
                reason: "an unexpected call form",
            };
            let mut push = Instruction::with1(
                Code::Push_rm64,
                MemoryOperand::with_base_displ(Register::RIP, const_addr as i64),
            )
            .map_err(|_| fail)?;
            push.set_ip(ins.ip());
            expected_rip_rel.push(const_addr);
            let mut jmp = *ins;
            let code = match ins.code() {
                Code::Call_rel32_64 => Code::Jmp_rel32_64,
                Code::Call_rm64 => Code::Jmp_rm64,
                _ => return Err(fail),
            };
            jmp.set_code(code);
            if code == Code::Jmp_rm64
                && ins.op0_kind() == OpKind::Memory
                && ins.memory_base() == Register::RSP
            {
                // The push moved the stack pointer down by 8 before the operand is read.
                jmp.set_memory_displacement64(ins.memory_displacement64().wrapping_add(8));
            }
            if ins.is_ip_rel_memory_operand() {
                expected_rip_rel.push(ins.ip_rel_memory_address());
            }
            // Distinct IPs for the encoder: the jmp takes one no branch can target.
            jmp.set_ip(0xffff_ffff_ffff_e000);
            block.push(push);
            block.push(jmp);
        } else {
            if ins.is_ip_rel_memory_operand() {
                expected_rip_rel.push(ins.ip_rel_memory_address());
            }
            block.push(*ins);
        }
    }
    let mut back = Instruction::with_branch(Code::Jmp_rel32_64, back_to)
        .map_err(|_| FastRefusal::Relocation { at: site.addr })?;
    back.set_ip(0xffff_ffff_ffff_f000);
    block.push(back);
    let at = tramp + displaced_at as u64;
    let enc = BlockEncoder::encode(
        64,
        InstructionBlock::new(&block, at),
        BlockEncoderOptions::NONE,
    )
    .map_err(|_| FastRefusal::Relocation { at: site.addr })?;
    if displaced_at + enc.code_buffer.len() > CONST_AT {
        return Err(FastRefusal::Relocation { at: site.addr });
    }
    c.extend_from_slice(&enc.code_buffer);
    // Every RIP-relative operand of the copy reaches what the original reached.
    let moved: Vec<u64> = Decoder::with_ip(64, &enc.code_buffer, at, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| i.is_ip_rel_memory_operand())
        .map(|i| i.ip_rel_memory_address())
        .collect();
    if moved != expected_rip_rel {
        let at = site
            .instrs
            .iter()
            .find(|i| i.is_ip_rel_memory_operand())
            .map_or(site.addr, |i| i.ip());
        return Err(FastRefusal::Relocation { at });
    }
    let mut out = [0xccu8; TRAMPOLINE_SIZE];
    out[..c.len()].copy_from_slice(&c);
    if let Some(ret) = return_address {
        out[CONST_AT..].copy_from_slice(&ret.to_le_bytes());
    }
    Ok((out, displaced_at))
}

/// The vector registers a trampoline saves around a hit, by what the CPU and the kernel
/// enabled. The hit runs Rust code built for baseline x86-64 and glibc's string routines,
/// which use the vector registers, the mask registers and MXCSR (an AVX2 `memcpy` ends
/// with `vzeroupper`, an EVEX one uses ymm16-31), but never x87 or MMX: those are left
/// alone. Saving them with explicit moves costs ~25 ns with AVX-512 here, against
/// ~170-230 ns for `xsavec`/`xrstor` of the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorState {
    /// xmm0-15 and MXCSR.
    Sse,
    /// ymm0-15 and MXCSR.
    Avx,
    /// zmm0-31, k0-7 (16 bits wide, or 64 with AVX512BW) and MXCSR.
    Avx512 {
        /// AVX512BW: 64-bit mask registers.
        bw: bool,
    },
}

impl VectorState {
    /// What this CPU and kernel enabled; `None` when XCR0 holds state the trampoline does
    /// not save that glibc's routines could touch (APX's extended registers).
    pub fn detect() -> Option<VectorState> {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let leaf1 = __cpuid(1);
        if leaf1.ecx & (1 << 27) == 0 {
            return Some(VectorState::Sse); // no OSXSAVE: no AVX state can be enabled
        }
        let (lo, hi): (u32, u32);
        // SAFETY: xgetbv with ecx = 0 reads XCR0; allowed at CPL 3 when OSXSAVE is set.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags))
        };
        let xcr0 = (hi as u64) << 32 | lo as u64;
        if xcr0 & (1 << 19) != 0 {
            return None;
        }
        let leaf7 = __cpuid_count(7, 0);
        let avx = leaf1.ecx & (1 << 28) != 0 && xcr0 & 0b110 == 0b110;
        let avx512 = avx && leaf7.ebx & (1 << 16) != 0 && xcr0 & 0xe0 == 0xe0;
        Some(if avx512 {
            VectorState::Avx512 {
                bw: leaf7.ebx & (1 << 30) != 0,
            }
        } else if avx {
            VectorState::Avx
        } else {
            VectorState::Sse
        })
    }

    /// Bytes between vector registers `k` and `k + 1` in the area (xmm `k` is the first 16).
    pub fn stride(self) -> u32 {
        match self {
            VectorState::Sse => 16,
            VectorState::Avx => 32,
            VectorState::Avx512 { .. } => 64,
        }
    }

    /// Bytes of the save area (a multiple of 64).
    pub fn area(self) -> u32 {
        match self {
            VectorState::Sse => 320,
            VectorState::Avx => 576,
            VectorState::Avx512 { .. } => 2176,
        }
    }
}

/// How a trampoline saves the vector state: its routines and the area they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorSave {
    /// What is saved.
    pub state: VectorState,
    /// `save(area in rdi)`.
    pub save: u64,
    /// `restore(area in rdi)`.
    pub restore: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asm(code: &[u8]) -> Vec<Instruction> {
        Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    const LAYOUT: VectorSave = VectorSave {
        state: VectorState::Avx512 { bw: true },
        save: 0x7000,
        restore: 0x8000,
    };

    // 0x1000: push rbx (1) ; mov rbx, rdi (3) ; add rax, rbx (3) ; ret
    const SIMPLE: &[u8] = &[0x53, 0x48, 0x89, 0xfb, 0x48, 0x01, 0xd8, 0xc3];

    #[test]
    fn a_span_covers_whole_instructions() {
        let s = analyze(0x1000, 0x1000, SIMPLE).unwrap();
        assert_eq!(s.span_len(), 7);
        assert_eq!(s.instrs.len(), 3);
        assert_eq!(
            analyze(0x1004, 0x1000, SIMPLE).unwrap_err(),
            FastRefusal::SpanPastEnd
        );
        assert_eq!(
            analyze(0x1002, 0x1000, SIMPLE).unwrap_err(),
            FastRefusal::NotAnInstruction
        );
    }

    #[test]
    fn a_branch_into_the_span_is_refused_with_where_it_is() {
        // 0x1000: push rbx ; mov rbx, rdi ; add rax, rbx ; jne 0x1001 (75 f6) ; ret
        let code = [0x53, 0x48, 0x89, 0xfb, 0x48, 0x01, 0xd8, 0x75, 0xf8, 0xc3];
        assert_eq!(asm(&code)[3].near_branch_target(), 0x1001);
        let e = analyze(0x1000, 0x1000, &code).unwrap_err();
        assert_eq!(
            e,
            FastRefusal::BranchIntoSpan {
                from: 0x1007,
                to: 0x1001
            }
        );
        assert_eq!(
            e.to_string(),
            "a branch at 0x1007 lands inside the patched bytes (at 0x1001)"
        );
        // A branch to the span's first byte is fine.
        let code = [0x53, 0x48, 0x89, 0xfb, 0x48, 0x01, 0xd8, 0x75, 0xf7, 0xc3];
        assert!(analyze(0x1000, 0x1000, &code).is_ok());
    }

    #[test]
    fn indirect_jumps_calls_and_joins_are_refused() {
        // jmp rax in the function
        let code = [0x48, 0x89, 0xfb, 0x48, 0x01, 0xd8, 0xff, 0xe0];
        assert_eq!(
            analyze(0x1000, 0x1000, &code).unwrap_err(),
            FastRefusal::IndirectJump { at: 0x1006 }
        );
        // mov eax, 1 (5 bytes, a span of one instruction) ; add rax, rbx ; jmp rax: allowed,
        // nothing starts inside the span for the jump to land on
        let code = [0xb8, 0x01, 0, 0, 0, 0x48, 0x01, 0xd8, 0xff, 0xe0];
        assert_eq!(analyze(0x1000, 0x1000, &code).unwrap().span_len(), 5);
        // ... but probed at the add, the span holds the add and the jmp: refused
        assert_eq!(
            analyze(0x1005, 0x1000, &code).unwrap_err(),
            FastRefusal::IndirectJump { at: 0x1008 }
        );
        // jmp [rip+0] (a tail call through the GOT) is allowed
        let code = [0x48, 0x89, 0xfb, 0x48, 0x01, 0xd8, 0xff, 0x25, 0, 0, 0, 0];
        assert!(analyze(0x1000, 0x1000, &code).is_ok());
        // push; call rax; add: the call is not last
        let code = [0x53, 0xff, 0xd0, 0x48, 0x01, 0xd8, 0xc3];
        assert_eq!(
            analyze(0x1000, 0x1000, &code).unwrap_err(),
            FastRefusal::CallInSpan { at: 0x1001 }
        );
        // ret then push (a block reached only by jumps)
        let code = [0xc3, 0x53, 0x48, 0x89, 0xfb, 0xc3];
        assert_eq!(
            analyze(0x1000, 0x1000, &code).unwrap_err(),
            FastRefusal::JoinInSpan { at: 0x1001 }
        );
        // syscall in the span
        let code = [0x53, 0x0f, 0x05, 0x48, 0x89, 0xfb, 0xc3];
        assert!(matches!(
            analyze(0x1000, 0x1000, &code).unwrap_err(),
            FastRefusal::Unsupported { at: 0x1001, .. }
        ));
    }

    #[test]
    fn the_trampoline_saves_calls_restores_and_runs_the_relocated_span() {
        // 0x40_0000: mov rax, [rip+0x100] (7) ; call rel32 (5 -> target 0x40_1000)
        let code = [
            0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0xe8, 0xf4, 0x0f, 0x00, 0x00, 0xc3,
        ];
        let s = analyze(0x40_0000, 0x40_0000, &code).unwrap();
        assert_eq!(s.span_len(), 7);
        let tramp = 0x50_0000;
        let (bytes, displaced) = trampoline_code(&s, tramp, 0x1234_5678, LAYOUT).unwrap();
        let text: Vec<String> =
            Decoder::with_ip(64, &bytes[..displaced], tramp, DecoderOptions::NONE)
                .into_iter()
                .map(|i| i.to_string())
                .collect();
        assert_eq!(text[0], "lea rsp,[rsp-80h]");
        assert_eq!(text[1], "pushfq");
        // save(area), hit(frame, addr, area, stride), restore(area)
        let calls: Vec<usize> = (0..text.len()).filter(|&i| text[i] == "call rax").collect();
        assert_eq!(calls.len(), 3, "{text:?}");
        assert_eq!(text[calls[0] - 1], "mov rax,7000h");
        assert_eq!(text[calls[1] - 2], "mov ecx,40h");
        assert_eq!(text[calls[1] - 1], "mov rax,12345678h");
        assert_eq!(text[calls[2] - 1], "mov rax,8000h");
        assert_eq!(text.last().unwrap(), "lea rsp,[rsp+80h]");
        let mut d = Decoder::with_ip(
            64,
            &bytes[displaced..],
            tramp + displaced as u64,
            DecoderOptions::NONE,
        );
        let mov = d.decode();
        assert_eq!(mov.ip_rel_memory_address(), 0x40_0107);
        assert_eq!(d.decode().near_branch_target(), 0x40_0007);
        // A span ending in a call: push the original return address, jump.
        assert_eq!(
            analyze(0x40_000c, 0x40_0000, &code).unwrap_err(),
            FastRefusal::SpanPastEnd
        );
        let code = [0xe8, 0xfb, 0x0f, 0x00, 0x00, 0xc3];
        let s = analyze(0x40_0000, 0x40_0000, &code).unwrap();
        let (bytes, displaced) = trampoline_code(&s, tramp, 0x1234_5678, LAYOUT).unwrap();
        let mut d = Decoder::with_ip(
            64,
            &bytes[displaced..],
            tramp + displaced as u64,
            DecoderOptions::NONE,
        );
        let push = d.decode();
        assert_eq!(push.code(), Code::Push_rm64);
        let c = (push.ip_rel_memory_address() - tramp) as usize;
        assert_eq!(
            u64::from_le_bytes(bytes[c..c + 8].try_into().unwrap()),
            0x40_0005
        );
        assert_eq!(d.decode().near_branch_target(), 0x40_1000);
        assert_eq!(s.patch_bytes(tramp)[0], 0xe9);
    }
}
