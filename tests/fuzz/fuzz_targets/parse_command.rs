//! The JSON command parser (`Command::parse_json_line`) on arbitrary text: never panics, every
//! error is one line, and whatever it accepts writes back (`to_json_line`) to a line that parses
//! to the same command with the same fingerprint.
#![no_main]

use ledger::domain::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match Command::parse_json_line(line) {
        Ok(cmd) => {
            let written = cmd.to_json_line();
            assert!(!written.contains('\n'), "a written command is one line");
            let back = Command::parse_json_line(&written).expect("a written command parses");
            assert_eq!(back, cmd, "parse -> write -> parse changed the command");
            assert_eq!(back.fingerprint(), cmd.fingerprint());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "error is one line: {message:?}");
        }
    }
});
