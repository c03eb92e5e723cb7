//! Decoding a guest's trapped load or store to emulated MMIO (the virtual PLIC).
//!
//! A guest-page fault on a device the hypervisor emulates leaves the faulting
//! instruction in `mtinst` (transformed, as the privileged specification's H chapter
//! describes) or, where the hart writes 0 there, in guest memory at the faulting PC,
//! which the hypervisor fetches itself. Either way this module turns the instruction
//! bits into an [`MmioAccess`]: direction, width, register and length. Anything that
//! is not a plain integer load or store (FP loads, AMOs, LR/SC, vector accesses, a
//! garbage word) is refused, and the hypervisor answers the guest with an access fault,
//! as hardware would for a device that does not support the access.

/// One decoded integer load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// A store (else a load).
    pub store: bool,
    /// Bytes accessed: 1, 2, 4 or 8.
    pub width: u8,
    /// The data register (`rd` of a load, `rs2` of a store), 0..=31.
    pub reg: u8,
    /// A load that sign-extends (LB, LH, LW).
    pub signed: bool,
    /// Length of the instruction in bytes (2 for compressed, else 4): the guest's PC
    /// moves past it once the access is emulated.
    pub len: u8,
}

impl MmioAccess {
    /// The value a load of `raw` (the device's `width` bytes, zero-extended) leaves in
    /// the destination register.
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.width) * 8;
        if bits >= 64 {
            return raw;
        }
        let masked = raw & ((1u64 << bits) - 1);
        if self.signed && masked >> (bits - 1) & 1 == 1 {
            masked | !((1u64 << bits) - 1)
        } else {
            masked
        }
    }

    /// The bytes a store of register value `value` writes (its low `width` bytes).
    pub fn store_value(&self, value: u64) -> u64 {
        let bits = u32::from(self.width) * 8;
        if bits >= 64 {
            value
        } else {
            value & ((1u64 << bits) - 1)
        }
    }
}

const OP_LOAD: u32 = 0x03;
const OP_STORE: u32 = 0x23;

/// Decodes a 32-bit (or, in the low 16 bits, compressed) instruction word. Bits above
/// a compressed instruction's 16 are ignored.
pub fn decode(insn: u32) -> Option<MmioAccess> {
    if insn & 3 != 3 {
        return decode_compressed(insn as u16);
    }
    let funct3 = (insn >> 12) & 7;
    match insn & 0x7f {
        OP_LOAD => {
            let (width, signed) = match funct3 {
                0 => (1, true),
                1 => (2, true),
                2 => (4, true),
                3 => (8, false),
                4 => (1, false),
                5 => (2, false),
                6 => (4, false),
                _ => return None,
            };
            Some(MmioAccess {
                store: false,
                width,
                reg: ((insn >> 7) & 31) as u8,
                signed,
                len: 4,
            })
        }
        OP_STORE => {
            let width = match funct3 {
                0 => 1,
                1 => 2,
                2 => 4,
                3 => 8,
                _ => return None,
            };
            Some(MmioAccess {
                store: true,
                width,
                reg: ((insn >> 20) & 31) as u8,
                signed: false,
                len: 4,
            })
        }
        _ => None,
    }
}

/// Decodes the RV64C integer loads and stores (C.LW, C.LD, C.SW, C.SD and their
/// SP-relative forms).
fn decode_compressed(insn: u16) -> Option<MmioAccess> {
    let insn = u32::from(insn);
    let quadrant = insn & 3;
    let funct3 = (insn >> 13) & 7;
    // Quadrant 0 uses the compressed registers x8..x15 (rd' / rs2' in bits 4:2).
    let creg = (((insn >> 2) & 7) + 8) as u8;
    let full_rd = ((insn >> 7) & 31) as u8;
    let full_rs2 = ((insn >> 2) & 31) as u8;
    let (store, width, reg) = match (quadrant, funct3) {
        (0, 2) => (false, 4, creg),                    // C.LW
        (0, 3) => (false, 8, creg),                    // C.LD
        (0, 6) => (true, 4, creg),                     // C.SW
        (0, 7) => (true, 8, creg),                     // C.SD
        (2, 2) if full_rd != 0 => (false, 4, full_rd), // C.LWSP
        (2, 3) if full_rd != 0 => (false, 8, full_rd), // C.LDSP
        (2, 6) => (true, 4, full_rs2),                 // C.SWSP
        (2, 7) => (true, 8, full_rs2),                 // C.SDSP
        _ => return None,
    };
    Some(MmioAccess {
        store,
        width,
        reg,
        signed: !store && width == 4,
        len: 2,
    })
}

/// Decodes the transformed instruction a guest-page fault leaves in `mtinst`/`htinst`:
/// `None` if it holds none (0, or a pseudoinstruction for an implicit VS-stage access)
/// or one that is not a plain load or store. Bit 1 clear marks a compressed original,
/// transformed into its 32-bit equivalent.
pub fn decode_transformed(tinst: u64) -> Option<MmioAccess> {
    if tinst & 1 == 0 {
        return None;
    }
    let compressed = tinst & 2 == 0;
    let word = (tinst as u32) | 2;
    let mut access = decode(word)?;
    if compressed {
        access.len = 2;
    }
    Some(access)
}

/// The destination register of `insn` if it only reads the `time` CSR (`rdtime rd`:
/// `csrrs rd, time, x0`, or `csrrsi rd, time, 0`), which harts that do not implement
/// the CSR (such as the HiFive Unleashed's U54) raise as an illegal instruction and the
/// hypervisor answers from the platform timer, as machine firmware does.
pub fn decode_time_read(insn: u32) -> Option<u8> {
    const SYSTEM: u32 = 0x73;
    const CSR_TIME: u32 = 0xC01;
    let funct3 = (insn >> 12) & 7;
    let rs1_or_uimm = (insn >> 15) & 0x1f;
    let rd = ((insn >> 7) & 0x1f) as u8;
    // CSRRS (2) or CSRRSI (6) with nothing set is a pure read.
    let read_only = matches!(funct3, 2 | 6) && rs1_or_uimm == 0;
    (insn & 0x7f == SYSTEM && insn >> 20 == CSR_TIME && read_only).then_some(rd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_standard_loads_and_stores() {
        // lw a0, 4(a1)
        let a = decode(0x0045_a503).unwrap();
        assert_eq!(
            a,
            MmioAccess {
                store: false,
                width: 4,
                reg: 10,
                signed: true,
                len: 4
            }
        );
        // lwu a0, 0(a1)
        let a = decode(0x0005_e503).unwrap();
        assert!(!a.signed);
        assert_eq!(a.width, 4);
        // sw a5, 4(a0)
        let a = decode(0x00f5_2223).unwrap();
        assert_eq!((a.store, a.width, a.reg), (true, 4, 15));
        // sd t0, 0(a0)
        let a = decode(0x0055_3023).unwrap();
        assert_eq!((a.store, a.width, a.reg), (true, 8, 5));
        // lbu, lh
        assert_eq!(decode(0x0005_c503).unwrap().width, 1);
        assert_eq!(decode(0x0005_9503).unwrap().width, 2);
    }

    #[test]
    fn refuses_what_is_not_a_plain_access() {
        assert_eq!(decode(0x0005_a507), None); // flw
        assert_eq!(decode(0x0805_a52f), None); // amoswap.w
        assert_eq!(decode(0x0000_0073), None); // ecall
        assert_eq!(decode(0x0005_f503), None); // load funct3 7
        assert_eq!(decode(0x0055_4023), None); // store funct3 4
        assert_eq!(decode(0), None);
        assert_eq!(decode(u32::MAX), None);
        assert_eq!(decode_transformed(0), None);
    }

    #[test]
    fn decodes_compressed() {
        // c.lw a0, 0(a1) = 0x4188
        let a = decode(0x4188).unwrap();
        assert_eq!(
            (a.store, a.width, a.reg, a.len, a.signed),
            (false, 4, 10, 2, true)
        );
        // c.sw a0, 0(a1) = 0xc188
        let a = decode(0xc188).unwrap();
        assert_eq!((a.store, a.width, a.reg, a.len), (true, 4, 10, 2));
        // c.ld a0, 0(a1) = 0x6188
        assert_eq!(decode(0x6188).unwrap().width, 8);
        // c.sdsp a0, 0(sp) = 0xe02a
        let a = decode(0xe02a).unwrap();
        assert_eq!((a.store, a.width, a.reg), (true, 8, 10));
        // c.lwsp with rd = 0 is reserved
        assert_eq!(decode(0x4002), None);
        // c.addi is not an access
        assert_eq!(decode(0x0505), None);
    }

    #[test]
    fn transformed_instructions() {
        // A transformed lw a0 (rs1 and offset zeroed): 0x00002503.
        let a = decode_transformed(0x2503).unwrap();
        assert_eq!((a.store, a.width, a.reg, a.len), (false, 4, 10, 4));
        // The same from a compressed original: bit 1 clear.
        let a = decode_transformed(0x2501).unwrap();
        assert_eq!((a.width, a.reg, a.len), (4, 10, 2));
        // Pseudoinstructions (implicit VS-stage walk accesses) have bit 0 clear.
        assert_eq!(decode_transformed(0x2000), None);
        assert_eq!(decode_transformed(0x3000), None);
    }

    #[test]
    fn values_are_extended_and_truncated() {
        let lw = decode(0x0045_a503).unwrap();
        assert_eq!(lw.load_value(0x8000_0000), 0xffff_ffff_8000_0000);
        let lwu = decode(0x0005_e503).unwrap();
        assert_eq!(lwu.load_value(0xffff_ffff_8000_0000), 0x8000_0000);
        let sw = decode(0x00f5_2223).unwrap();
        assert_eq!(sw.store_value(0x1234_5678_9abc_def0), 0x9abc_def0);
        let sd = decode(0x0055_3023).unwrap();
        assert_eq!(sd.store_value(u64::MAX), u64::MAX);
    }

    #[test]
    fn never_panics() {
        for i in 0..=u16::MAX {
            if let Some(a) = decode(u32::from(i)) {
                assert!(a.reg < 32 && matches!(a.width, 1 | 2 | 4 | 8));
            }
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if let Some(a) = decode(x) {
                assert!(a.reg < 32 && matches!(a.width, 1 | 2 | 4 | 8));
                let _ = a.load_value(u64::from(x));
            }
            let _ = decode_transformed(u64::from(x));
        }
    }

    #[test]
    fn time_reads_are_recognised_and_nothing_else() {
        // rdtime a0 (0xc0102573), rdtime t0, csrrsi a5, time, 0.
        assert_eq!(decode_time_read(0xc010_2573), Some(10));
        assert_eq!(decode_time_read(0xc010_22f3), Some(5));
        assert_eq!(decode_time_read(0xc010_67f3), Some(15));
        // rdcycle, a write of time (csrrw), a set with a register, wfi, garbage.
        assert_eq!(decode_time_read(0xc000_2573), None);
        assert_eq!(decode_time_read(0xc010_1573), None);
        assert_eq!(decode_time_read(0xc015_2573), None);
        assert_eq!(decode_time_read(0x1050_0073), None);
        assert_eq!(decode_time_read(0xffff_ffff), None);
    }
}
