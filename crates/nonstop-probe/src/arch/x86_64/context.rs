//! Access to the interrupted thread's registers in a signal's `ucontext_t`.

use iced_x86::Register;
use nonstop_capture::capture::{GPR_COUNT, Registers, XMM_COUNT};

/// `gregs` indices in DWARF register order (rax rdx rcx rbx rsi rdi rbp rsp r8..r15 rip).
const DWARF_TO_GREG: [usize; GPR_COUNT] = [
    libc::REG_RAX as usize,
    libc::REG_RDX as usize,
    libc::REG_RCX as usize,
    libc::REG_RBX as usize,
    libc::REG_RSI as usize,
    libc::REG_RDI as usize,
    libc::REG_RBP as usize,
    libc::REG_RSP as usize,
    libc::REG_R8 as usize,
    libc::REG_R9 as usize,
    libc::REG_R10 as usize,
    libc::REG_R11 as usize,
    libc::REG_R12 as usize,
    libc::REG_R13 as usize,
    libc::REG_R14 as usize,
    libc::REG_R15 as usize,
    libc::REG_RIP as usize,
];

/// The `gregs` index of a 64-bit general register.
pub fn greg_index(reg: Register) -> Option<u8> {
    let i = match reg {
        Register::RAX => libc::REG_RAX,
        Register::RCX => libc::REG_RCX,
        Register::RDX => libc::REG_RDX,
        Register::RBX => libc::REG_RBX,
        Register::RSP => libc::REG_RSP,
        Register::RBP => libc::REG_RBP,
        Register::RSI => libc::REG_RSI,
        Register::RDI => libc::REG_RDI,
        Register::R8 => libc::REG_R8,
        Register::R9 => libc::REG_R9,
        Register::R10 => libc::REG_R10,
        Register::R11 => libc::REG_R11,
        Register::R12 => libc::REG_R12,
        Register::R13 => libc::REG_R13,
        Register::R14 => libc::REG_R14,
        Register::R15 => libc::REG_R15,
        _ => return None,
    };
    Some(i as u8)
}

/// The interrupted thread's context, borrowed for the length of a signal handler.
pub struct Context<'a> {
    uc: &'a mut libc::ucontext_t,
}

impl<'a> Context<'a> {
    /// Wraps the handler's third argument.
    ///
    /// # Safety
    ///
    /// `uc` must be the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler that is
    /// still running, and nothing else may access it meanwhile.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub unsafe fn new(uc: *mut libc::c_void) -> Option<Context<'a>> {
        // SAFETY: the kernel's ucontext is valid and exclusively ours for the handler.
        unsafe { uc.cast::<libc::ucontext_t>().as_mut() }.map(|uc| Context { uc })
    }

    /// A general register by `gregs` index (0 for a bad index).
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn greg(&self, i: usize) -> u64 {
        self.uc.uc_mcontext.gregs.get(i).copied().unwrap_or(0) as u64
    }

    /// Sets a general register by `gregs` index.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn set_greg(&mut self, i: usize, v: u64) {
        if let Some(g) = self.uc.uc_mcontext.gregs.get_mut(i) {
            *g = v as i64;
        }
    }

    /// The instruction pointer.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn rip(&self) -> u64 {
        self.greg(libc::REG_RIP as usize)
    }

    /// Sets the instruction pointer.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn set_rip(&mut self, v: u64) {
        self.set_greg(libc::REG_RIP as usize, v)
    }

    /// The stack pointer.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn rsp(&self) -> u64 {
        self.greg(libc::REG_RSP as usize)
    }

    /// Sets the stack pointer.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn set_rsp(&mut self, v: u64) {
        self.set_greg(libc::REG_RSP as usize, v)
    }

    /// RFLAGS.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn flags(&self) -> u64 {
        self.greg(libc::REG_EFL as usize)
    }

    /// Whether the interrupted code ran on the alternate signal stack. The kernel saves the
    /// thread's alternate stack (base, size) in `uc_stack` at delivery; its `ss_flags` are
    /// the configured flags, not "on stack", so compare the stack pointer.
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn on_alternate_stack(&self) -> bool {
        let ss = &self.uc.uc_stack;
        let (base, size) = (ss.ss_sp as u64, ss.ss_size as u64);
        let sp = self.rsp();
        ss.ss_flags & libc::SS_DISABLE == 0 && size != 0 && sp > base && sp - base <= size
    }

    /// Whether a fault raised now could not be handled safely: the interrupted thread
    /// blocks SIGSEGV or SIGBUS (the kernel makes a blocked fault fatal), or it was on the
    /// alternate stack (a nested fault frame would land on top of the frames there).
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn faults_unsafe(&self) -> bool {
        self.blocks_fault_signals() || self.on_alternate_stack()
    }

    /// Whether the interrupted thread blocks SIGSEGV or SIGBUS (a fault there is fatal).
    #[unsafe(link_section = "nonstop_probe_trap")]
    pub fn blocks_fault_signals(&self) -> bool {
        // Bit n-1 of glibc's sigset_t is signal n; read directly (no libc call, which a
        // probe could trap).
        const _: () = assert!(std::mem::size_of::<libc::sigset_t>() == 128);
        // SAFETY: sigset_t is 128 bytes of plain bits, readable as 16 u64s.
        let words: [u64; 16] = unsafe { std::mem::transmute_copy(&self.uc.uc_sigmask) };
        let bit = |sig: libc::c_int| words[0] & (1u64 << (sig - 1)) != 0;
        bit(libc::SIGSEGV) || bit(libc::SIGBUS)
    }

    /// Fills `regs` with the general registers (rip = `rip`) and xmm0..15 when the kernel
    /// saved the extended state.
    pub fn registers(&self, rip: u64, regs: &mut Registers) {
        for (dst, &g) in regs.gpr.iter_mut().zip(DWARF_TO_GREG.iter()) {
            *dst = self.greg(g);
        }
        if let Some(last) = regs.gpr.last_mut() {
            *last = rip;
        }
        let fp = self.uc.uc_mcontext.fpregs;
        if fp.is_null() {
            return;
        }
        // SAFETY: a non-null fpregs points at the fxsave area the kernel wrote into the
        // signal frame, which lives as long as the handler.
        let fp = unsafe { &*fp };
        for (dst, src) in regs.xmm.iter_mut().zip(fp._xmm.iter()).take(XMM_COUNT) {
            for (k, word) in src.element.iter().enumerate() {
                if let Some(d) = dst.get_mut(k * 4..k * 4 + 4) {
                    d.copy_from_slice(&word.to_le_bytes());
                }
            }
        }
    }
}
