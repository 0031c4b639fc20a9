from qtd.strategy import Strategy


class Raises(Strategy):
    def on_start(self):
        self.n = 0

    def on_bar(self, bar):
        self.n += 1
        if self.n == 50:
            raise KeyError("missing indicator state")
