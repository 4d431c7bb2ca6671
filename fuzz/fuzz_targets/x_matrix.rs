//! The `Authorization: X-Matrix …` header of federation requests: parsing never
//! panics, and a parsed header renders to a header that parses to itself.
#![no_main]

use lattice::domain::xmatrix::XMatrix;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(header) = XMatrix::parse(text) {
        let rendered = header.to_header();
        assert_eq!(
            XMatrix::parse(&rendered).as_ref(),
            Ok(&header),
            "{rendered}"
        );
    }
});
