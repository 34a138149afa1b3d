//! What to do with the instruction displaced by a probe's `int3`: refuse it, emulate it in
//! the trap handler, or run a relocated copy out of line (XOL) in a slot ending in `jmp back`.
//!
//! Decisions (uprobes' allow-list, adjusted):
//! - refused: instructions that trap, enter the kernel, are privileged, change `ss`, far
//!   transfers, branches with an operand-size prefix, and ES/CS/DS/SS segment prefixes
//!   (FS/GS are fine: their bases do not depend on where the instruction runs);
//! - LOCK-prefixed instructions are *allowed*: the relocated copy is the same atomic
//!   instruction, so atomicity is unchanged (uprobes refuses them for reasons of its own);
//! - emulated: `nop`, `jmp rel`, `jcc rel`, `call rel32`, `push r64` — no slot is entered;
//! - calls never run from a slot: a call's slot is `push qword [original return address];
//!   jmp target`, used for indirect calls and when emulating `call rel32` cannot write the
//!   stack (the copy then faults exactly as the call would).

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, ConditionCode, Decoder, DecoderOptions, FlowControl,
    Instruction, InstructionBlock, Mnemonic, OpKind, Register,
};

use super::context::greg_index;

/// Bytes of one XOL slot; the last 16 hold constants.
pub const SLOT_SIZE: usize = 128;
const CONST_AT: usize = SLOT_SIZE - 16;

/// How the handler performs the displaced instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Run the slot's copy (relocated instruction + `jmp back`).
    OutOfLine,
    /// Skip the instruction.
    Nop,
    /// Set RIP to the target.
    Jmp,
    /// Jump to the target if the condition (iced `ConditionCode` as u8) holds.
    Jcc(u8),
    /// Push the original return address, then jump to the target.
    CallRel,
    /// Push the value of the general register (gregs index).
    Push(u8),
}

impl Emulation {
    /// Packs into a u32 for an atomic: kind in the low byte, argument in the next.
    pub fn pack(self) -> u32 {
        match self {
            Emulation::OutOfLine => 0,
            Emulation::Nop => 1,
            Emulation::Jmp => 2,
            Emulation::Jcc(c) => 3 | (c as u32) << 8,
            Emulation::CallRel => 4,
            Emulation::Push(r) => 5 | (r as u32) << 8,
        }
    }

    /// Inverse of [`Emulation::pack`]; unknown values run out of line.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn unpack(v: u32) -> Emulation {
        let arg = (v >> 8) as u8;
        match v & 0xff {
            1 => Emulation::Nop,
            2 => Emulation::Jmp,
            3 => Emulation::Jcc(arg),
            4 => Emulation::CallRel,
            5 => Emulation::Push(arg),
            _ => Emulation::OutOfLine,
        }
    }
}

/// A decoded probe site.
#[derive(Debug, Clone)]
pub struct Site {
    /// The original bytes of the instruction.
    pub bytes: [u8; 16],
    /// The address after it.
    pub next_ip: u64,
    /// The branch target for direct branches, else 0.
    pub target: u64,
    /// What the handler does.
    pub emulation: Emulation,
    /// The instruction, for relocation.
    pub instruction: Instruction,
    /// The instruction as text, for messages.
    pub text: String,
}

/// Why a site cannot be probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteError {
    /// The bytes are not a valid instruction.
    Undecodable,
    /// The instruction cannot run out of line; `reason` says why.
    Unsupported {
        /// The instruction as text.
        instruction: String,
        /// Why, for a person.
        reason: &'static str,
    },
    /// Relocation into the slot failed (an operand out of ±2 GB reach of the slot).
    Relocation {
        /// The instruction as text.
        instruction: String,
        /// What the encoder said.
        detail: String,
    },
}

/// Decodes the instruction at `addr` from `bytes` (up to 15 live bytes) and decides how to
/// handle it.
pub fn analyze(addr: u64, bytes: &[u8]) -> Result<Site, SiteError> {
    let mut decoder = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() || ins.len() == 0 || ins.len() > bytes.len() {
        return Err(SiteError::Undecodable);
    }
    let text = format!("{ins}");
    let refuse = |reason: &'static str| SiteError::Unsupported {
        instruction: text.clone(),
        reason,
    };
    if let Some(reason) = refusal(&ins) {
        return Err(refuse(reason));
    }
    let mut orig = [0u8; 16];
    orig[..ins.len()].copy_from_slice(&bytes[..ins.len()]);
    let mut target = 0;
    let emulation = match ins.code() {
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => {
            target = ins.near_branch_target();
            Emulation::Jmp
        }
        Code::Call_rel32_64 => {
            target = ins.near_branch_target();
            Emulation::CallRel
        }
        Code::Push_r64 => match greg_index(ins.op0_register()) {
            Some(r) => Emulation::Push(r),
            None => Emulation::OutOfLine,
        },
        _ if ins.is_jcc_short_or_near() => {
            if !matches!(ins.op0_kind(), OpKind::NearBranch64) {
                return Err(refuse(
                    "a branch with an operand-size prefix behaves differently on Intel and AMD",
                ));
            }
            target = ins.near_branch_target();
            Emulation::Jcc(ins.condition_code() as u8)
        }
        _ if ins.is_jmp_short_or_near() || ins.is_call_near() => {
            return Err(refuse(
                "a branch with an operand-size prefix behaves differently on Intel and AMD",
            ));
        }
        _ if ins.mnemonic() == Mnemonic::Nop => Emulation::Nop,
        _ => Emulation::OutOfLine,
    };
    if ins.is_call_near_indirect() {
        let uses_rsp = match ins.op0_kind() {
            OpKind::Register => ins.op0_register() == Register::RSP,
            _ => ins.memory_index() == Register::RSP,
        };
        if uses_rsp {
            return Err(refuse(
                "an indirect call through the stack pointer cannot be relocated",
            ));
        }
    }
    Ok(Site {
        bytes: orig,
        next_ip: ins.next_ip(),
        target,
        emulation,
        instruction: ins,
        text,
    })
}

/// Why an instruction may not be probed, or `None`.
fn refusal(ins: &Instruction) -> Option<&'static str> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    let reason = match m {
        Int3 | Int1 | Int | Into | Ud0 | Ud1 | Ud2 => "it raises a trap itself",
        Syscall | Sysenter | Sysexit | Sysret | Sysexitq | Sysretq => {
            "it enters the kernel, which may restart it at its own address"
        }
        Hlt | Cli | Sti | In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd | Lgdt | Lidt
        | Lldt | Ltr | Lmsw | Invlpg | Swapgs | Clts | Wbinvd | Invd | Rdmsr | Wrmsr | Sldt
        | Str | Sgdt | Sidt | Smsw | Verr | Verw | Monitor | Mwait => "it is a system instruction",
        Iret | Iretd | Iretq | Retf => "it is a far return",
        Xbegin | Xend | Xabort => "transactional memory regions cannot be split",
        _ => "",
    };
    if !reason.is_empty() {
        return Some(reason);
    }
    if matches!(
        ins.flow_control(),
        FlowControl::Interrupt | FlowControl::Exception
    ) {
        return Some("it raises a trap itself");
    }
    if ins.is_call_far()
        || ins.is_jmp_far()
        || ins.is_call_far_indirect()
        || ins.is_jmp_far_indirect()
    {
        return Some("it is a far transfer");
    }
    if matches!(m, Mov | Pop)
        && ins.op0_kind() == OpKind::Register
        && ins.op0_register() == Register::SS
    {
        return Some("loading `ss` masks the next trap");
    }
    if matches!(m, Mov) && (ins.op0_register().is_cr() || ins.op0_register().is_dr()) {
        return Some("it is a system instruction");
    }
    if matches!(
        ins.segment_prefix(),
        Register::ES | Register::CS | Register::DS | Register::SS
    ) {
        return Some("it has an ES/CS/DS/SS segment prefix");
    }
    None
}

/// The bytes of the XOL slot for `site` placed at `slot`: the displaced instruction
/// relocated to run there, then a jump back to the instruction after the site.
pub fn slot_code(site: &Site, slot: u64) -> Result<[u8; SLOT_SIZE], SiteError> {
    let fail = |detail: String| SiteError::Relocation {
        instruction: site.text.clone(),
        detail,
    };
    let mut out = [0xccu8; SLOT_SIZE];
    let ins = &site.instruction;
    let is_call = ins.is_call_near() || ins.is_call_near_indirect();
    let (prefix, instrs) = if is_call {
        // push qword [rip + to constant] ; then the jump.
        let disp = (slot + CONST_AT as u64) as i64 - (slot + 6) as i64;
        let mut p = vec![0xff, 0x35];
        p.extend_from_slice(&(disp as i32).to_le_bytes());
        let mut jmp = *ins;
        let code = match ins.code() {
            Code::Call_rel32_64 => Code::Jmp_rel32_64,
            Code::Call_rm64 => Code::Jmp_rm64,
            other => return Err(fail(format!("unexpected call form {other:?}"))),
        };
        jmp.set_code(code);
        if code == Code::Jmp_rm64
            && ins.op0_kind() == OpKind::Memory
            && ins.memory_base() == Register::RSP
        {
            // The push moved the stack pointer down by 8 before the operand is read.
            jmp.set_memory_displacement64(ins.memory_displacement64().wrapping_add(8));
        }
        (p, vec![jmp])
    } else {
        let mut back = Instruction::with_branch(Code::Jmp_rel32_64, site.next_ip)
            .map_err(|e| fail(e.to_string()))?;
        // An IP no branch can target: with ip = next_ip the encoder would resolve the
        // jump's own target to itself.
        back.set_ip(0xffff_ffff_ffff_f000);
        (Vec::new(), vec![*ins, back])
    };
    let at = slot + prefix.len() as u64;
    let block = InstructionBlock::new(&instrs, at);
    let enc = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
        .map_err(|e| fail(e.to_string()))?;
    let code_len = prefix.len() + enc.code_buffer.len();
    if code_len > CONST_AT {
        return Err(fail(format!("relocated code takes {code_len} bytes")));
    }
    out[..prefix.len()].copy_from_slice(&prefix);
    out[prefix.len()..code_len].copy_from_slice(&enc.code_buffer);
    if is_call {
        out[CONST_AT..CONST_AT + 8].copy_from_slice(&site.next_ip.to_le_bytes());
    }
    // Checks that a RIP-relative operand still reaches its original target.
    if ins.is_ip_rel_memory_operand() && !is_call {
        let mut d = Decoder::with_ip(64, &out[..code_len], slot, DecoderOptions::NONE);
        let moved = d.decode();
        if !moved.is_ip_rel_memory_operand()
            || moved.ip_rel_memory_address() != ins.ip_rel_memory_address()
        {
            return Err(fail(
                "the relocated RIP-relative operand does not reach its target".into(),
            ));
        }
    }
    Ok(out)
}

/// Evaluates an x86 condition code (iced `ConditionCode` as u8) on RFLAGS.
#[unsafe(link_section = "nonstop_probe_trap")]
pub fn condition_holds(cond: u8, flags: u64) -> bool {
    let cf = flags & 1 != 0;
    let pf = flags & (1 << 2) != 0;
    let zf = flags & (1 << 6) != 0;
    let sf = flags & (1 << 7) != 0;
    let of = flags & (1 << 11) != 0;
    const O: u8 = ConditionCode::o as u8;
    const NO: u8 = ConditionCode::no as u8;
    const B: u8 = ConditionCode::b as u8;
    const AE: u8 = ConditionCode::ae as u8;
    const E: u8 = ConditionCode::e as u8;
    const NE: u8 = ConditionCode::ne as u8;
    const BE: u8 = ConditionCode::be as u8;
    const A: u8 = ConditionCode::a as u8;
    const S: u8 = ConditionCode::s as u8;
    const NS: u8 = ConditionCode::ns as u8;
    const P: u8 = ConditionCode::p as u8;
    const NP: u8 = ConditionCode::np as u8;
    const L: u8 = ConditionCode::l as u8;
    const GE: u8 = ConditionCode::ge as u8;
    const LE: u8 = ConditionCode::le as u8;
    const G: u8 = ConditionCode::g as u8;
    match cond {
        O => of,
        NO => !of,
        B => cf,
        AE => !cf,
        E => zf,
        NE => !zf,
        BE => cf || zf,
        A => !cf && !zf,
        S => sf,
        NS => !sf,
        P => pf,
        NP => !pf,
        L => sf != of,
        GE => sf == of,
        LE => zf || sf != of,
        G => !zf && sf == of,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_syscall_with_a_reason() {
        let e = analyze(0x1000, &[0x0f, 0x05]).unwrap_err();
        assert!(
            matches!(e, SiteError::Unsupported { ref instruction, .. } if instruction == "syscall"),
            "{e:?}"
        );
    }

    #[test]
    fn classifies_branches_calls_and_pushes() {
        assert_eq!(
            analyze(0x1000, &[0xeb, 0x10]).unwrap().emulation,
            Emulation::Jmp
        );
        assert_eq!(analyze(0x1000, &[0xeb, 0x10]).unwrap().target, 0x1012);
        let call = analyze(0x1000, &[0xe8, 0, 1, 0, 0]).unwrap();
        assert_eq!((call.emulation, call.target), (Emulation::CallRel, 0x1105));
        assert!(matches!(
            analyze(0x1000, &[0x74, 0x02]).unwrap().emulation,
            Emulation::Jcc(_)
        ));
        assert!(matches!(
            analyze(0x1000, &[0x41, 0x57]).unwrap().emulation,
            Emulation::Push(_)
        ));
        assert_eq!(analyze(0x1000, &[0x90]).unwrap().emulation, Emulation::Nop);
        assert_eq!(
            analyze(0x1000, &[0x48, 0x01, 0xd8]).unwrap().emulation,
            Emulation::OutOfLine
        );
        assert!(analyze(0x1000, &[0x26, 0x48, 0x01, 0xd8]).is_err());
        assert!(analyze(0x1000, &[0x66, 0xe9, 0, 0]).is_err());
    }

    #[test]
    fn relocates_rip_relative_operands_and_jumps_back() {
        // mov rax, [rip + 0x100] at 0x40_0000
        let site = analyze(0x40_0000, &[0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00]).unwrap();
        let slot = 0x40_0000 + 0x1000_0000;
        let code = slot_code(&site, slot).unwrap();
        let mut d = Decoder::with_ip(64, &code, slot, DecoderOptions::NONE);
        let a = d.decode();
        assert_eq!(a.ip_rel_memory_address(), 0x40_0107);
        let b = d.decode();
        assert_eq!(b.near_branch_target(), 0x40_0007);
    }

    #[test]
    fn a_call_slot_pushes_the_original_return_address() {
        let site = analyze(0x40_0000, &[0xe8, 0, 1, 0, 0]).unwrap();
        let slot = 0x50_0000;
        let code = slot_code(&site, slot).unwrap();
        let mut d = Decoder::with_ip(64, &code, slot, DecoderOptions::NONE);
        let push = d.decode();
        assert_eq!(push.code(), Code::Push_rm64);
        let c = push.ip_rel_memory_address() as usize - slot as usize;
        assert_eq!(
            u64::from_le_bytes(code[c..c + 8].try_into().unwrap()),
            0x40_0005
        );
        assert_eq!(d.decode().near_branch_target(), 0x40_0105);
    }

    #[test]
    fn conditions() {
        assert!(condition_holds(ConditionCode::e as u8, 1 << 6));
        assert!(!condition_holds(ConditionCode::ne as u8, 1 << 6));
        assert!(condition_holds(ConditionCode::l as u8, 1 << 7));
        assert!(!condition_holds(
            ConditionCode::l as u8,
            (1 << 7) | (1 << 11)
        ));
    }
}
