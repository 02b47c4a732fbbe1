//! Printing to stdout the way command-line tools should: when the reader
//! goes away (`berthctl get tasks | head`), berthctl stops quietly instead of
//! panicking the way `println!` does on a closed pipe.

use std::io::Write;

/// Writes `args` to stdout; exits quietly if nobody reads it any more.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!`, but quiet on a closed pipe.
#[macro_export]
macro_rules! say {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!`, but quiet on a closed pipe.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}
