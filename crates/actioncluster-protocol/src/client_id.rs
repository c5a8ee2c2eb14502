//! Client ids: 160 bits from a CSPRNG written in base 36, left-padded with `0` to 31
//! characters, as Faye makes them.

use rand::RngCore;

/// Length of every client id.
pub const CLIENT_ID_LEN: usize = 31;

/// A fresh random client id.
pub fn generate() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    to_base36(bytes)
}

fn to_base36(bytes: [u8; 20]) -> String {
    // Big-endian 160-bit number in five u32 limbs; repeated division by 36.
    let mut limbs = [0u32; 5];
    for (i, chunk) in bytes.chunks(4).enumerate() {
        limbs[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let mut digits = [b'0'; CLIENT_ID_LEN];
    for slot in digits.iter_mut().rev() {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / 36) as u32;
            rem = cur % 36;
        }
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize];
    }
    String::from_utf8_lossy(&digits).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), CLIENT_ID_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn base36_of_known_values() {
        let mut one = [0u8; 20];
        one[19] = 36;
        assert_eq!(to_base36(one), format!("{}10", "0".repeat(29)));
        assert_eq!(to_base36([0xff; 20]), "twj4yidkw7a8pn4g709kzmfoaol3x8f"); // 2^160 - 1
    }
}
