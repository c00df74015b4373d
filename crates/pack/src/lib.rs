//! Object selection and packfile streaming: answers a protocol v2 `fetch` from a local
//! repository. Not built yet; the README's status table says what works.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
