//! Facts the README states, read from it, so a test can hold the code to
//! what the README promises (and fail when either drifts).

/// The README, as committed.
pub const README: &str = include_str!("../../README.md");

/// `words → number` of the README's "`keyway-agent pair` exit codes:"
/// sentence, parenthesised notes dropped (`already paired (--force)` →
/// `already paired`).
pub fn pair_exit_codes() -> std::collections::HashMap<String, i32> {
    let text = README
        .split("`keyway-agent pair` exit codes:")
        .nth(1)
        .expect("the README lists the pair exit codes")
        .split(". `keyway-relay`")
        .next()
        .expect("split yields one part");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.split(", ")
        .map(|item| {
            let item = item.split(" (").next().unwrap_or(item).trim();
            let (n, words) = item.split_once(' ').expect("NUMBER words");
            (words.to_string(), n.parse().expect("a number"))
        })
        .collect()
}
