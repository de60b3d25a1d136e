//! The README's first command, as a test: the 4-bit SmolLM2 answers the capital question.

use crate::support::{converted, rmlx, Variant, CHAT_PROMPT};

#[test]
fn q4_chat_answer_names_paris() {
    let dir = converted(Variant::Q4);
    let run = rmlx([
        "generate".as_ref(),
        dir.as_os_str(),
        "--chat".as_ref(),
        "--prompt".as_ref(),
        CHAT_PROMPT.as_ref(),
        "--max-tokens".as_ref(),
        "24".as_ref() as &std::ffi::OsStr,
    ]);
    assert!(run.success(), "generate failed\n{}", run.describe());
    assert!(
        run.stdout.contains("Paris"),
        "the answer to {CHAT_PROMPT:?} does not mention Paris\n{}",
        run.describe()
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
}
