//! What the camera examples share: the services' names and message types, and where the pool
//! is served.

#![allow(dead_code)]

use fbuf::bytemuck::{Pod, Zeroable};

pub const FRAMES: &str = "camera/frames";
pub const CONTROL: &str = "camera/control";
pub const EVENTS: &str = "camera/events";
/// Event bit: the exposure changed.
pub const EXPOSURE_CHANGED: u32 = 0;

pub const WIDTH: usize = 256;
pub const HEIGHT: usize = 255;

/// One image: 64 KiB with its header, written in place in a pool slot and read in place.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct Frame {
    pub seq: u64,
    pub exposure: u32,
    pub width: u16,
    pub height: u16,
    pub pixels: [u8; WIDTH * HEIGHT],
    pub pad: [u8; 240],
}

impl Frame {
    /// The value of pixel `i` of frame `seq` taken at `exposure`.
    pub fn pixel(seq: u64, exposure: u32, i: usize) -> u8 {
        (seq as u8)
            .wrapping_add(exposure as u8)
            .wrapping_add((i % 251) as u8)
    }

    pub fn paint(&mut self, seq: u64, exposure: u32) {
        self.seq = seq;
        self.exposure = exposure;
        self.width = WIDTH as u16;
        self.height = HEIGHT as u16;
        for (i, p) in self.pixels.iter_mut().enumerate() {
            *p = Frame::pixel(seq, exposure, i);
        }
    }

    pub fn is_intact(&self) -> bool {
        self.pixels
            .iter()
            .enumerate()
            .all(|(i, p)| *p == Frame::pixel(self.seq, self.exposure, i))
    }
}

/// A request to the camera's control service.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct Command {
    /// 1: set the exposure to `value`; 2: report.
    pub op: u32,
    pub value: u32,
}

/// The camera's answer.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub struct Status {
    pub frames: u64,
    pub exposure: u32,
    pub subscribers: u32,
}

pub const SET_EXPOSURE: u32 = 1;
pub const REPORT: u32 = 2;

/// The socket: the first argument, or one in the temporary directory.
pub fn socket(arg: Option<String>) -> std::path::PathBuf {
    arg.map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("fbuf-camera.sock"))
}
