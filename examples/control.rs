//! A controller process: joins the camera's pool, waits until VIEWERS viewers watch (default
//! 0), sets the exposure through the `camera/control` request-response service and asks for a
//! report. See `examples/camera.rs`.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use fbuf::{Role, session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = socket(args.next());
    let exposure: u32 = args.next().map_or(Ok(180), |a| a.parse())?;
    let viewers: u32 = args.next().map_or(Ok(0), |a| a.parse())?;
    let pool = session::join(&path, Role::Producer)?;
    let control = pool
        .service(CONTROL)
        .request_response::<Command, Status>()
        .open()?;
    let mut client = control.client()?;
    let report = Command {
        op: REPORT,
        value: 0,
    };
    while client.call(&report, Duration::from_secs(10))?.subscribers < viewers {
        std::thread::sleep(Duration::from_millis(2));
    }
    let set = Command {
        op: SET_EXPOSURE,
        value: exposure,
    };
    let after_set = client.call(&set, Duration::from_secs(10))?;
    let status = client.call(&report, Duration::from_secs(10))?;
    println!(
        "control: exposure set to {} (camera had sent {} frames); now {} frames, {} viewers",
        after_set.exposure, after_set.frames, status.frames, status.subscribers
    );
    if after_set.exposure != exposure || status.exposure != exposure {
        std::process::exit(1);
    }
    Ok(())
}
