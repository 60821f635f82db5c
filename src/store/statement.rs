//! Multi-row statements built with their arguments: each bound value writes its own
//! placeholder where it appears, so the text's order and the binding order cannot disagree.
//!
//! On SQLite the placeholders are anonymous `?`. sqlx looks every numbered parameter
//! (`$n`, `?n`) up by name, and SQLite's lookup walks the statement's list of names, so a
//! statement of k numbered parameters costs k² steps to bind: at 16 rows of 16 values that was
//! the writer thread's largest single cost. Anonymous ones are bound by position. PostgreSQL
//! needs numbered ones (`$1`, `$2`, ...), which its protocol binds by position anyway.

use sqlx::any::{Any, AnyArguments};
use sqlx::{Arguments, Encode, Type};

use super::Backend;

/// A statement's text and arguments, built together.
pub(crate) struct Statement<'q> {
    text: String,
    args: AnyArguments<'q>,
    backend: Backend,
    bound: usize,
    error: Option<String>,
}

impl<'q> Statement<'q> {
    /// A statement for `backend` starting with `text`.
    pub(crate) fn new(backend: Backend, text: &str) -> Self {
        let mut out = String::with_capacity(text.len() + 1024);
        out.push_str(text);
        Self {
            text: out,
            args: AnyArguments::default(),
            backend,
            bound: 0,
            error: None,
        }
    }

    /// Appends literal SQL.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub(crate) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.bound += 1;
        match self.backend {
            Backend::Sqlite => self.text.push('?'),
            Backend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.bound.to_string());
            }
        }
        if let Err(e) = self.args.add(value) {
            // Kept for `finish`: a value that cannot be encoded fails the statement.
            self.error.get_or_insert_with(|| e.to_string());
        }
        self
    }

    /// Appends `CAST(placeholder AS ty)` bound to `value` (PostgreSQL cannot infer the type
    /// of a parameter in a `VALUES` list).
    pub(crate) fn bind_as<T>(&mut self, value: T, ty: &str) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.push("CAST(")
            .bind(value)
            .push(" AS ")
            .push(ty)
            .push(")")
    }

    /// Appends `values`, each bound, comma-separated (the inside of an `IN (...)`).
    pub(crate) fn list<T, I>(&mut self, values: I) -> &mut Self
    where
        I: IntoIterator<Item = T>,
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(value);
        }
        self
    }

    /// Appends one parenthesized row per item, comma-separated, each written by `row`.
    pub(crate) fn rows<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Row<'_, 'q>, I::Item),
    {
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push('(');
            row(
                &mut Row {
                    statement: self,
                    first: true,
                },
                item,
            );
            self.text.push(')');
        }
        self
    }

    /// The text and its arguments, or why a value could not be bound.
    pub(crate) fn finish(self) -> anyhow::Result<(String, AnyArguments<'q>)> {
        match self.error {
            Some(e) => Err(anyhow::anyhow!("binding a statement's arguments: {e}")),
            None => Ok((self.text, self.args)),
        }
    }
}

/// One row of a `VALUES` list: its values are separated by commas.
pub(crate) struct Row<'s, 'q> {
    statement: &'s mut Statement<'q>,
    first: bool,
}

impl<'q> Row<'_, 'q> {
    fn separate(&mut self) {
        if !self.first {
            self.statement.text.push_str(", ");
        }
        self.first = false;
    }

    /// The next value, bound.
    pub(crate) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.separate();
        self.statement.bind(value);
        self
    }

    /// The next value, bound and cast to `ty`.
    pub(crate) fn bind_as<T>(&mut self, value: T, ty: &str) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.separate();
        self.statement.bind_as(value, ty);
        self
    }

    /// The next value, literal SQL.
    pub(crate) fn raw(&mut self, text: &str) -> &mut Self {
        self.separate();
        self.statement.push(text);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(backend: Backend) -> String {
        let mut s = Statement::new(backend, "INSERT INTO t (a, b, c, d) VALUES ");
        s.rows([1_i64, 2], |row, n| {
            row.bind(n).raw("0").bind_as(n * 10, "BIGINT").bind("x");
        });
        s.push(" WHERE e = ").bind(7_i64);
        s.push(" AND f IN (").list(["a", "b"]).push(")");
        s.finish().expect("bound").0
    }

    #[test]
    fn sqlite_placeholders_are_positional_and_postgres_ones_numbered_in_text_order() {
        assert_eq!(
            text(Backend::Sqlite),
            "INSERT INTO t (a, b, c, d) VALUES (?, 0, CAST(? AS BIGINT), ?),\
             (?, 0, CAST(? AS BIGINT), ?) WHERE e = ? AND f IN (?, ?)"
        );
        assert_eq!(
            text(Backend::Postgres),
            "INSERT INTO t (a, b, c, d) VALUES ($1, 0, CAST($2 AS BIGINT), $3),\
             ($4, 0, CAST($5 AS BIGINT), $6) WHERE e = $7 AND f IN ($8, $9)"
        );
    }
}
