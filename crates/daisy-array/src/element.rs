//! The element types an [`Array`](crate::Array) can hold.

use std::fmt;

use zarrs::array::{DataType, ElementOwned, FillValue, data_type};

mod sealed {
    pub trait Sealed {}
}

/// A scalar type stored in an [`Array`](crate::Array): `u8`, `u16`, `u32`,
/// `u64`, `i8`, `i16`, `i32`, `i64`, `f32` or `f64`.
///
/// The trait is sealed: each type maps to exactly one zarr v3 data type
/// (`uint8` … `float64`, little-endian on disk), and opening an array checks
/// that the stored data type is the one of `T`.
pub trait Element:
    sealed::Sealed + ElementOwned + Copy + PartialEq + fmt::Debug + Send + Sync + 'static
{
    /// The zarr v3 data type of this element.
    #[doc(hidden)]
    fn zarr_data_type() -> DataType;

    /// The zarr fill value holding `self`.
    #[doc(hidden)]
    fn to_fill_value(self) -> FillValue;

    /// Decodes a fill value (native-endian bytes); `None` if the size differs.
    #[doc(hidden)]
    fn from_fill_value(fill_value: &FillValue) -> Option<Self>;
}

macro_rules! element {
    ($($t:ty => $data_type:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            fn zarr_data_type() -> DataType {
                data_type::$data_type()
            }
            fn to_fill_value(self) -> FillValue {
                FillValue::from(self)
            }
            fn from_fill_value(fill_value: &FillValue) -> Option<Self> {
                let bytes = fill_value.as_ne_bytes().try_into().ok()?;
                Some(<$t>::from_ne_bytes(bytes))
            }
        }
    )*};
}

element!(
    u8 => uint8,
    u16 => uint16,
    u32 => uint32,
    u64 => uint64,
    i8 => int8,
    i16 => int16,
    i32 => int32,
    i64 => int64,
    f32 => float32,
    f64 => float64,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_values_round_trip() {
        assert_eq!(i64::from_fill_value(&(-7i64).to_fill_value()), Some(-7));
        assert_eq!(f32::from_fill_value(&1.5f32.to_fill_value()), Some(1.5));
        assert_eq!(u8::from_fill_value(&300u16.to_fill_value()), None);
    }
}
