//! Reads call arguments the way HBase's Java Thrift server does: a list or map argument the client
//! left out is empty, not an error.
//!
//! Thrift's generated Rust server treats every argument as required, but HBase's server (Java)
//! does not, and clients rely on that: happybase sends `getRowWithColumns(table, row, None, {})`
//! for `table.row(key)`, so the `columns` field is simply absent from the message. This wrapper
//! sits between the transport's protocol and the generated processor. At the end of a call's
//! argument struct it supplies each absent list or map argument as an empty one, so the generated
//! code reads `columns = []` (all columns), as the Java server does.

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier, TSetIdentifier,
    TStructIdentifier, TType,
};

/// The optional-in-practice list (`L`) and map (`M`) arguments of each call, by field id, from
/// Hbase.thrift: the columns lists and the attributes maps.
fn optional_arguments(call: &str) -> &'static [(i16, TType)] {
    const L: TType = TType::List;
    const M: TType = TType::Map;
    match call {
        "getRowWithColumns" | "getRowsWithColumns" | "scannerOpen" | "scannerOpenWithPrefix" => &[(3, L), (4, M)],
        "getRowWithColumnsTs" | "getRowsWithColumnsTs" | "scannerOpenTs" => &[(3, L), (5, M)],
        "scannerOpenWithStop" => &[(4, L), (5, M)],
        "scannerOpenWithStopTs" => &[(4, L), (6, M)],
        "getRow" | "getRows" | "mutateRows" | "deleteAllRow" | "scannerOpenWithScan" => &[(3, M)],
        "get" | "getRowTs" | "getRowsTs" | "mutateRow" | "mutateRowsTs" | "deleteAll" | "deleteAllRowTs" => &[(4, M)],
        "getVer" | "mutateRowTs" | "deleteAllTs" => &[(5, M)],
        "getVerTs" => &[(6, M)],
        "checkAndPut" => &[(7, M)],
        _ => &[],
    }
}

pub(super) struct Lenient<P> {
    inner: P,
    /// Optional arguments of the call being read.
    optional: &'static [(i16, TType)],
    /// Struct nesting: 1 inside the call's argument struct.
    depth: usize,
    /// Argument fields seen in the current call.
    seen: Vec<i16>,
    /// The inner protocol has reached the end of the argument struct; absent optional arguments
    /// are being supplied.
    at_stop: bool,
    /// An empty list or map is due for the field just supplied.
    supplying: Option<TType>,
}

impl<P> Lenient<P> {
    pub(super) fn new(inner: P) -> Lenient<P> {
        Lenient { inner, optional: &[], depth: 0, seen: Vec::new(), at_stop: false, supplying: None }
    }
}

impl<P: TInputProtocol> TInputProtocol for Lenient<P> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        let message = self.inner.read_message_begin()?;
        self.optional = optional_arguments(&message.name);
        (self.depth, self.at_stop, self.supplying) = (0, false, None);
        self.seen.clear();
        Ok(message)
    }
    fn read_message_end(&mut self) -> thrift::Result<()> {
        self.inner.read_message_end()
    }
    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.depth += 1;
        self.inner.read_struct_begin()
    }
    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        self.inner.read_struct_end()
    }
    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        if self.depth != 1 {
            return self.inner.read_field_begin();
        }
        if !self.at_stop {
            let field = self.inner.read_field_begin()?;
            if field.field_type != TType::Stop {
                self.seen.extend(field.id);
                return Ok(field);
            }
            self.at_stop = true;
        }
        match self.optional.iter().find(|(id, _)| !self.seen.contains(id)) {
            Some(&(id, field_type)) => {
                self.seen.push(id);
                self.supplying = Some(field_type);
                Ok(TFieldIdentifier::new::<Option<String>, String, i16>(None, field_type, id))
            }
            None => Ok(TFieldIdentifier::new::<Option<String>, String, Option<i16>>(None, TType::Stop, None)),
        }
    }
    fn read_field_end(&mut self) -> thrift::Result<()> {
        if self.depth == 1 && self.at_stop {
            return Ok(());
        }
        self.inner.read_field_end()
    }
    fn read_bool(&mut self) -> thrift::Result<bool> {
        self.inner.read_bool()
    }
    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        self.inner.read_bytes()
    }
    fn read_i8(&mut self) -> thrift::Result<i8> {
        self.inner.read_i8()
    }
    fn read_i16(&mut self) -> thrift::Result<i16> {
        self.inner.read_i16()
    }
    fn read_i32(&mut self) -> thrift::Result<i32> {
        self.inner.read_i32()
    }
    fn read_i64(&mut self) -> thrift::Result<i64> {
        self.inner.read_i64()
    }
    fn read_double(&mut self) -> thrift::Result<f64> {
        self.inner.read_double()
    }
    fn read_string(&mut self) -> thrift::Result<String> {
        self.inner.read_string()
    }
    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        if self.supplying == Some(TType::List) {
            return Ok(TListIdentifier::new(TType::String, 0));
        }
        self.inner.read_list_begin()
    }
    fn read_list_end(&mut self) -> thrift::Result<()> {
        if self.supplying.take() == Some(TType::List) {
            return Ok(());
        }
        self.inner.read_list_end()
    }
    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        self.inner.read_set_begin()
    }
    fn read_set_end(&mut self) -> thrift::Result<()> {
        self.inner.read_set_end()
    }
    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        if self.supplying == Some(TType::Map) {
            return Ok(TMapIdentifier::new(TType::String, TType::String, 0));
        }
        self.inner.read_map_begin()
    }
    fn read_map_end(&mut self) -> thrift::Result<()> {
        if self.supplying.take() == Some(TType::Map) {
            return Ok(());
        }
        self.inner.read_map_end()
    }
    fn read_byte(&mut self) -> thrift::Result<u8> {
        self.inner.read_byte()
    }
}
