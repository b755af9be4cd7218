//! Lists inside packets without an allocator: either the validated wire bytes a packet was decoded from, or a
//! borrowed slice of items to encode. Both forms iterate the same items and compare equal when their items do.

use core::fmt;
use core::marker::PhantomData;

use super::properties::{PropertyValue, RawProperties};
use super::wire::{Reader, Writer};
use super::{EncodeError, Malformed};

/// An item of a payload list (topic filters of SUBSCRIBE and UNSUBSCRIBE). Sealed: the codec implements it.
pub trait ListItem<'a>: Sized + Copy {
    /// Reads one item.
    fn read(r: &mut Reader<'a>) -> Result<Self, Malformed>;
    /// The item's encoded size.
    fn wire_len(&self) -> usize;
    /// Writes the item.
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
}

/// A list of items in a packet's payload.
#[derive(Clone, Copy)]
pub enum List<'a, T> {
    /// Validated wire bytes, as decoded.
    Wire(&'a [u8], PhantomData<T>),
    /// Items to encode.
    Items(&'a [T]),
}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// A list of the given items.
    pub const fn new(items: &'a [T]) -> Self {
        List::Items(items)
    }

    /// Checks that `bytes` is a sequence of whole, valid items and wraps it.
    pub(crate) fn validate(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            T::read(&mut r)?;
        }
        Ok(List::Wire(bytes, PhantomData))
    }

    /// The items, in order.
    pub fn iter(&self) -> ListIter<'a, T> {
        match *self {
            List::Wire(bytes, _) => ListIter::Wire(Reader::new(bytes)),
            List::Items(items) => ListIter::Items(items.iter()),
        }
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        match self {
            List::Wire(..) => self.iter().count(),
            List::Items(items) => items.len(),
        }
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub(crate) fn wire_len(&self) -> usize {
        match self {
            List::Wire(bytes, _) => bytes.len(),
            List::Items(items) => items.iter().map(ListItem::wire_len).sum(),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            List::Wire(bytes, _) => w.bytes(bytes),
            List::Items(items) => items.iter().try_for_each(|item| item.write(w)),
        }
    }
}

impl<'a, T> Default for List<'a, T> {
    fn default() -> Self {
        List::Items(&[])
    }
}

impl<'a, T: ListItem<'a> + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<'a, T: ListItem<'a> + Eq> Eq for List<'a, T> {}

impl<'a, T: ListItem<'a> + fmt::Debug> fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<'a, T: ListItem<'a> + defmt::Format> defmt::Format for List<'a, T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "[");
        for item in self.iter() {
            defmt::write!(f, "{}, ", item);
        }
        defmt::write!(f, "]");
    }
}

/// Iterator over a [`List`].
pub enum ListIter<'a, T> {
    #[doc(hidden)]
    Wire(Reader<'a>),
    #[doc(hidden)]
    Items(core::slice::Iter<'a, T>),
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            ListIter::Wire(r) if r.is_empty() => None,
            // Validated at decode time, so a read error cannot happen; end the iteration if it does.
            ListIter::Wire(r) => T::read(r).ok(),
            ListIter::Items(items) => items.next().copied(),
        }
    }
}

/// A property that may occur more than once (User Property, Subscription Identifier). Sealed.
pub trait PropertyItem<'a>: Sized + Copy {
    /// The property identifier.
    const ID: u8;
    /// The item from a decoded property value of this identifier.
    fn from_value(v: PropertyValue<'a>) -> Option<Self>;
    /// The value to encode.
    fn to_value(&self) -> PropertyValue<'a>;
}

/// The occurrences of one repeatable property: as decoded (the whole validated property block, filtered by
/// identifier) or as items to encode.
#[derive(Clone, Copy)]
pub enum PropertyList<'a, T> {
    /// The validated property block this list was decoded from.
    Wire(&'a [u8], PhantomData<T>),
    /// Items to encode.
    Items(&'a [T]),
}

impl<'a, T: PropertyItem<'a>> PropertyList<'a, T> {
    /// A list of the given items.
    pub const fn new(items: &'a [T]) -> Self {
        PropertyList::Items(items)
    }

    /// The items, in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        let (wire, items): (&'a [u8], &'a [T]) = match *self {
            PropertyList::Wire(bytes, _) => (bytes, &[]),
            PropertyList::Items(items) => (&[], items),
        };
        RawProperties::new(wire)
            .filter(|(id, _)| *id == T::ID)
            .filter_map(|(_, v)| T::from_value(v))
            .chain(items.iter().copied())
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub(crate) fn wire_len(&self) -> usize {
        self.iter().map(|item| 1 + item.to_value().wire_len()).sum()
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        self.iter().try_for_each(|item| {
            w.u8(T::ID)?;
            item.to_value().write(w)
        })
    }
}

impl<'a, T> Default for PropertyList<'a, T> {
    fn default() -> Self {
        PropertyList::Items(&[])
    }
}

impl<'a, T: PropertyItem<'a> + PartialEq> PartialEq for PropertyList<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<'a, T: PropertyItem<'a> + Eq> Eq for PropertyList<'a, T> {}

impl<'a, T: PropertyItem<'a> + fmt::Debug> fmt::Debug for PropertyList<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<'a, T: PropertyItem<'a> + defmt::Format> defmt::Format for PropertyList<'a, T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "[");
        for item in self.iter() {
            defmt::write!(f, "{}, ", item);
        }
        defmt::write!(f, "]");
    }
}
