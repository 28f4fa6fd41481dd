//! A lot's state and its rules: `decide` (may this command happen?) and `apply` (what
//! the state is after an event). Both are pure.

use super::{Capacity, LotEvent, LotName, TimeError};

/// Everything a lot needs to decide, rebuilt by folding its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LotState {
    /// `None` until `LotRegistered`.
    pub registration: Option<Registration>,
    pub occupancy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub capacity: Capacity,
}

impl LotState {
    pub fn capacity(&self) -> u32 {
        self.registration.as_ref().map_or(0, |r| r.capacity.get())
    }

    pub fn name(&self) -> &str {
        self.registration.as_ref().map_or("", |r| r.name.as_str())
    }

    pub fn is_registered(&self) -> bool {
        self.registration.is_some()
    }
}

/// What a client asks a lot to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Register { name: LotName, capacity: Capacity },
    ChangeCapacity { capacity: Capacity },
    Arrive,
    Depart,
    Count { count: u32 },
}

/// Why a lot refused a command. Each carries the state a client needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("lot is not registered")]
    NotRegistered,
    #[error("lot is already registered (name {name:?}, capacity {capacity})")]
    AlreadyRegistered { name: String, capacity: u32 },
    #[error("lot is full ({occupancy} of {capacity} spaces taken)")]
    LotFull { occupancy: u32, capacity: u32 },
    #[error("lot is empty: a departure would make occupancy negative")]
    LotEmpty { capacity: u32 },
    #[error("count {count} is above the lot's capacity {capacity}")]
    CountAboveCapacity { count: u32, capacity: u32 },
    #[error("capacity {capacity} is below the current occupancy {occupancy}")]
    CapacityBelowOccupancy { capacity: u32, occupancy: u32 },
    /// The event time breaks the rule every event must keep ([`super::check_event_time`]);
    /// the edges check it first, the lot checks it again as the last line.
    #[error("{0}")]
    InvalidTime(TimeError),
}

impl Rejection {
    /// A stable machine-readable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotRegistered => "lot_not_found",
            Rejection::AlreadyRegistered { .. } => "lot_already_registered",
            Rejection::LotFull { .. } => "lot_full",
            Rejection::LotEmpty { .. } => "lot_empty",
            Rejection::CountAboveCapacity { .. } => "count_above_capacity",
            Rejection::CapacityBelowOccupancy { .. } => "capacity_below_occupancy",
            Rejection::InvalidTime(_) => "invalid_timestamp",
        }
    }

    /// The request field a rejection is about, when it is one field's fault.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Rejection::InvalidTime(_) => Some("timestamp"),
            _ => None,
        }
    }
}

/// Decide whether `command` may happen to a lot in `state`, and which event records it.
///
/// Every accepted command yields exactly one event, so this returns one event rather
/// than a list.
pub fn decide(state: &LotState, command: &Command) -> Result<LotEvent, Rejection> {
    let Some(reg) = &state.registration else {
        return match command {
            Command::Register { name, capacity } => Ok(LotEvent::LotRegistered {
                name: name.as_str().to_owned(),
                capacity: *capacity,
            }),
            _ => Err(Rejection::NotRegistered),
        };
    };
    let capacity = reg.capacity.get();
    match command {
        Command::Register { .. } => Err(Rejection::AlreadyRegistered {
            name: reg.name.clone(),
            capacity,
        }),
        Command::ChangeCapacity { capacity: new } => {
            if new.get() < state.occupancy {
                Err(Rejection::CapacityBelowOccupancy {
                    capacity: new.get(),
                    occupancy: state.occupancy,
                })
            } else {
                Ok(LotEvent::LotCapacityChanged { capacity: *new })
            }
        }
        Command::Arrive => {
            if state.occupancy >= capacity {
                Err(Rejection::LotFull {
                    occupancy: state.occupancy,
                    capacity,
                })
            } else {
                Ok(LotEvent::VehicleArrived)
            }
        }
        Command::Depart => {
            if state.occupancy == 0 {
                Err(Rejection::LotEmpty { capacity })
            } else {
                Ok(LotEvent::VehicleDeparted)
            }
        }
        Command::Count { count } => {
            if *count > capacity {
                Err(Rejection::CountAboveCapacity {
                    count: *count,
                    capacity,
                })
            } else {
                Ok(LotEvent::OccupancyCounted { count: *count })
            }
        }
    }
}

/// Apply an event to a lot's state. Events are facts: apply never fails, and it never
/// lets occupancy leave `0..=u32::MAX` even for an event `decide` would not produce.
pub fn apply(state: &mut LotState, event: &LotEvent) {
    match event {
        LotEvent::LotRegistered { name, capacity } => {
            state.registration = Some(Registration {
                name: name.clone(),
                capacity: *capacity,
            });
        }
        LotEvent::LotCapacityChanged { capacity } => {
            if let Some(reg) = &mut state.registration {
                reg.capacity = *capacity;
            }
        }
        LotEvent::VehicleArrived => state.occupancy = state.occupancy.saturating_add(1),
        LotEvent::VehicleDeparted => state.occupancy = state.occupancy.saturating_sub(1),
        LotEvent::OccupancyCounted { count } => state.occupancy = *count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: i64) -> Capacity {
        Capacity::new(n).unwrap()
    }

    /// Given these events, when this command, then this event or rejection.
    fn given(events: &[LotEvent]) -> LotState {
        let mut state = LotState::default();
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn registered(capacity: i64) -> LotEvent {
        LotEvent::LotRegistered {
            name: "North 1".into(),
            capacity: cap(capacity),
        }
    }

    #[test]
    fn an_unregistered_lot_refuses_everything_but_registration() {
        let state = given(&[]);
        for cmd in [
            Command::Arrive,
            Command::Depart,
            Command::Count { count: 0 },
            Command::ChangeCapacity { capacity: cap(3) },
        ] {
            assert_eq!(decide(&state, &cmd), Err(Rejection::NotRegistered));
        }
        let reg = Command::Register {
            name: LotName::parse("North 1").unwrap(),
            capacity: cap(2),
        };
        assert_eq!(decide(&state, &reg), Ok(registered(2)));
    }

    #[test]
    fn registering_twice_is_refused_with_the_existing_registration() {
        let state = given(&[registered(2)]);
        let cmd = Command::Register {
            name: LotName::parse("Other").unwrap(),
            capacity: cap(9),
        };
        assert_eq!(
            decide(&state, &cmd),
            Err(Rejection::AlreadyRegistered {
                name: "North 1".into(),
                capacity: 2
            })
        );
    }

    #[test]
    fn arrivals_fill_the_lot_until_it_is_full() {
        let state = given(&[registered(2), LotEvent::VehicleArrived]);
        assert_eq!(
            decide(&state, &Command::Arrive),
            Ok(LotEvent::VehicleArrived)
        );
        let state = given(&[
            registered(2),
            LotEvent::VehicleArrived,
            LotEvent::VehicleArrived,
        ]);
        assert_eq!(state.occupancy, 2);
        assert_eq!(
            decide(&state, &Command::Arrive),
            Err(Rejection::LotFull {
                occupancy: 2,
                capacity: 2
            })
        );
    }

    #[test]
    fn a_departure_from_an_empty_lot_is_refused() {
        let state = given(&[
            registered(5),
            LotEvent::VehicleArrived,
            LotEvent::VehicleDeparted,
        ]);
        assert_eq!(state.occupancy, 0);
        assert_eq!(
            decide(&state, &Command::Depart),
            Err(Rejection::LotEmpty { capacity: 5 })
        );
    }

    #[test]
    fn a_count_sets_occupancy_absolutely_within_capacity() {
        let state = given(&[registered(10), LotEvent::VehicleArrived]);
        assert_eq!(
            decide(&state, &Command::Count { count: 7 }),
            Ok(LotEvent::OccupancyCounted { count: 7 })
        );
        assert_eq!(
            decide(&state, &Command::Count { count: 11 }),
            Err(Rejection::CountAboveCapacity {
                count: 11,
                capacity: 10
            })
        );
        let state = given(&[registered(10), LotEvent::OccupancyCounted { count: 7 }]);
        assert_eq!(state.occupancy, 7);
    }

    #[test]
    fn capacity_cannot_drop_below_occupancy() {
        let state = given(&[registered(10), LotEvent::OccupancyCounted { count: 6 }]);
        assert_eq!(
            decide(&state, &Command::ChangeCapacity { capacity: cap(5) }),
            Err(Rejection::CapacityBelowOccupancy {
                capacity: 5,
                occupancy: 6
            })
        );
        let event = decide(&state, &Command::ChangeCapacity { capacity: cap(6) }).unwrap();
        let mut state = state;
        apply(&mut state, &event);
        assert_eq!(state.capacity(), 6);
        assert_eq!(
            decide(&state, &Command::Arrive),
            Err(Rejection::LotFull {
                occupancy: 6,
                capacity: 6
            })
        );
    }
}
