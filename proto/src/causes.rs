//! Walking an error's chain of causes: the one place either end reads what
//! an error from hyper, rustls or the transport actually was.

use std::error::Error;

/// The causes from outermost to innermost, each once.
pub fn iter<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// The first cause of type `T`, looking inside `std::io::Error` wrappers
/// (which hide their inner error from `source()` in some versions).
pub fn find<'a, T: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a T> {
    iter(e).find_map(|cause| {
        cause.downcast_ref::<T>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| find::<T>(inner))
        })
    })
}

/// The causes joined into one readable line (`a: b: c`), repeats dropped.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = iter(e).map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn finds_a_cause_inside_an_io_error_and_joins_the_chain() {
        let e = Outer(std::io::Error::other(Inner));
        assert!(find::<Inner>(&e).is_some());
        assert!(find::<std::fmt::Error>(&e).is_none());
        assert_eq!(chain(&e), "outer: inner");
    }
}
