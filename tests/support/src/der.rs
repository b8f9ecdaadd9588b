//! Just enough DER to mint RFC 3161 timestamp tokens and Fulcio extensions by hand: a writer for
//! the handful of ASN.1 types they use, and a reader that walks TLVs (to pull the issuer and
//! serial number out of a certificate). Test code: malformed input panics.

/// Tag of a SEQUENCE.
pub(crate) const SEQUENCE: u8 = 0x30;
/// Tag of a SET (OF).
pub(crate) const SET: u8 = 0x31;

/// The TLV `tag || length || content`, with the DER (shortest) length form.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded `parts`, in order.
pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

/// A SET OF already-encoded `items`, sorted by encoding as DER requires.
pub(crate) fn set_of(mut items: Vec<Vec<u8>>) -> Vec<u8> {
    items.sort();
    tlv(SET, &items.concat())
}

/// `[n] EXPLICIT` (constructed context-specific tag) around an encoded value.
pub(crate) fn explicit(n: u8, inner: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, inner)
}

/// An OBJECT IDENTIFIER from its arcs.
pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, &arc) in arcs.iter().enumerate().skip(1) {
        let arc = if i == 1 { arcs[0] * 40 + arc } else { arc };
        let mut digits = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            digits.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        digits.reverse();
        body.extend(digits);
    }
    tlv(0x06, &body)
}

/// A non-negative INTEGER.
pub(crate) fn uint(n: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

/// An OCTET STRING.
pub(crate) fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

/// A UTF8String.
pub(crate) fn utf8_string(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

/// A GeneralizedTime `YYYYMMDDHHMMSSZ` (whole seconds, UTC) for unix time `secs`.
pub(crate) fn generalized_time(secs: i64) -> Vec<u8> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or_else(|e| panic!("unix time {secs} out of range: {e}"));
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(0x18, text.as_bytes())
}

/// One TLV read from the front of some input.
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    /// The value bytes.
    pub content: &'a [u8],
    /// The whole encoding, tag and length included.
    pub raw: &'a [u8],
    /// What follows it.
    pub rest: &'a [u8],
}

/// Reads the TLV at the start of `input` (single-byte tags only).
pub(crate) fn read(input: &[u8]) -> Tlv<'_> {
    assert!(input.len() >= 2, "truncated DER: {input:02x?}");
    let (len, header) = match input[1] {
        l if l < 0x80 => (l as usize, 2),
        l => {
            let n = (l & 0x7f) as usize;
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        }
    };
    let end = header + len;
    assert!(end <= input.len(), "truncated DER value");
    Tlv {
        tag: input[0],
        content: &input[header..end],
        raw: &input[..end],
        rest: &input[end..],
    }
}

/// The `(issuer Name, serialNumber INTEGER)` encodings of a DER certificate: what a CMS
/// `IssuerAndSerialNumber` names it by.
pub(crate) fn issuer_and_serial(cert_der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let cert = read(cert_der);
    let tbs = read(cert.content);
    let mut field = read(tbs.content);
    if field.tag == 0xa0 {
        field = read(field.rest); // explicit version
    }
    let serial = field.raw.to_vec();
    let signature_alg = read(field.rest);
    let issuer = read(signature_alg.rest);
    (issuer.raw.to_vec(), serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_primitives() {
        assert_eq!(utf8_string("ab"), [0x0c, 2, b'a', b'b']);
        let long = tlv(0x04, &[7; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        assert_eq!(long.len(), 203);
        assert_eq!(uint(0), [0x02, 1, 0]);
        assert_eq!(uint(0x80), [0x02, 2, 0, 0x80]);
        assert_eq!(uint(0x0102), [0x02, 2, 1, 2]);
        // sha256: 2.16.840.1.101.3.4.2.1
        assert_eq!(
            oid(&[2, 16, 840, 1, 101, 3, 4, 2, 1]),
            [0x06, 9, 0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 1]
        );
        assert_eq!(generalized_time(0), tlv(0x18, b"19700101000000Z"));
    }

    #[test]
    fn set_of_sorts_and_read_walks() {
        let set = set_of(vec![uint(2), uint(1)]);
        assert_eq!(set, [0x31, 6, 2, 1, 1, 2, 1, 2]);
        let outer = seq(&[&set, &octets(b"x")]);
        let t = read(&outer);
        assert_eq!((t.tag, t.rest.len()), (SEQUENCE, 0));
        let first = read(t.content);
        assert_eq!(first.raw, &set[..]);
        assert_eq!(read(first.rest).content, b"x");
    }
}
