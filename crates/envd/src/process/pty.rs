//! The master side of a pseudo-terminal, driven by tokio.

#![allow(unsafe_code)]

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};
use tokio::io::unix::AsyncFd;

/// A pty master in non-blocking mode. Reads fail with `EIO` once every slave holder is gone,
/// which callers treat as end of output.
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pty pair of the given size. Both ends are close-on-exec, so the child only gets the
/// slave through the stdio it is explicitly given.
pub(crate) fn open(cols: u16, rows: u16) -> io::Result<(PtyMaster, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pair = nix::pty::openpty(Some(&size), None)?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL)?);
    fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: `pair.master` is an open fd owned by the OwnedFd moved into the AsyncFd, which
    // keeps it open, unchanged, until the AsyncFd is dropped.
    let fd =
        unsafe { AsyncFd::register(pair.master) }.map_err(|e| io::Error::other(e.to_string()))?;
    Ok((PtyMaster { fd }, pair.slave))
}

impl PtyMaster {
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(written)) => data = &data[written..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub(crate) fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call;
        // the fd is an open pty master owned by `self`.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
